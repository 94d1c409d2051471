// sofamesh console UI. Pages are rendered by the server; every change is a call to the
// JSON API (/api/v1) with the session cookie and the CSRF token (double submit: the
// sofamesh_csrf cookie echoed in X-CSRF-Token). No library, nothing loaded from elsewhere.
"use strict";

(function () {
  const CSRF_COOKIE = "sofamesh_csrf";
  const FLASH_KEY = "sofamesh-flash";

  // ---- talking to the API -------------------------------------------------------------

  function csrfToken() {
    for (const part of document.cookie.split(";")) {
      const [name, ...rest] = part.trim().split("=");
      if (name === CSRF_COOKIE) return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      return { ok: false, status: 0, detail: "the console cannot be reached (" + err.message + ")" };
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = { detail: text };
      }
    }
    if (response.status === 401 && path !== "/api/v1/session") {
      // The session ended (expired, or logged out elsewhere): log in again, then come back.
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    }
    return { ok: response.ok, status: response.status, data, detail: data && data.detail };
  }

  const enc = encodeURIComponent;

  // ---- showing results ----------------------------------------------------------------

  function flash(message, isError) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.classList.toggle("error", Boolean(isError));
    box.hidden = false;
  }

  function flashAfterReload(message) {
    sessionStorage.setItem(FLASH_KEY, message);
    location.reload();
  }

  function slot(root, key) {
    return root.querySelector('[data-error-for="' + CSS.escape(key) + '"]');
  }

  function clearErrors(root) {
    root.querySelectorAll(".field-error").forEach((e) => {
      e.hidden = true;
      e.textContent = "";
    });
    root.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  }

  function showError(root, key, message) {
    const place = slot(root, key) || slot(root, "_form");
    if (!place) {
      flash(message, true);
      return;
    }
    place.textContent = place.textContent ? place.textContent + "\n" + message : message;
    place.hidden = false;
    const input = root.querySelector('[name="' + CSS.escape(key) + '"]');
    if (input) input.setAttribute("aria-invalid", "true");
  }

  // One line for an answer that is not a field error (or a summary of field errors).
  function messageOf(result) {
    const detail = result.detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
    if (typeof detail === "string") return detail;
    return "the console answered " + result.status;
  }

  // Put each error of a 4xx answer next to the field its `loc` names: the most specific
  // error slot that exists (["body", "limits", "8080"] -> "limits.8080", else "limits").
  function showErrors(root, result, sent) {
    const detail = result.detail;
    if (!Array.isArray(detail)) {
      showError(root, "_form", messageOf(result));
      return;
    }
    for (const item of detail) {
      const loc = (item.loc || []).slice();
      if (["body", "path", "query"].includes(loc[0])) loc.shift();
      let placed = false;
      for (let n = loc.length; n > 0 && !placed; n--) {
        const key = loc.slice(0, n).join(".");
        if (!slot(root, key)) continue;
        const index = loc[n];
        let prefix = "";
        if (typeof index === "number") {
          const entry = sent && sent[key] ? sent[key][index] : undefined;
          if (entry === undefined) prefix = "entry " + (index + 1) + ": ";
          else if (!item.msg.includes(entry)) prefix = "\u201c" + entry + "\u201d: ";
        }
        showError(root, key, prefix + item.msg);
        placed = true;
      }
      if (!placed) showError(root, "_form", (loc.length ? loc.join(".") + ": " : "") + item.msg);
    }
  }

  // ---- reading forms ------------------------------------------------------------------

  function field(form, name) {
    return form.querySelector('[name="' + CSS.escape(name) + '"]');
  }

  // Entries of a list field: split on commas, spaces and new lines.
  function entries(text) {
    return text.split(/[\s,]+/).filter(Boolean);
  }

  // Whole numbers go as JSON numbers; anything else as text, so the API names what is wrong.
  function numberOr(text) {
    return /^[0-9]{1,15}$/.test(text) ? Number(text) : text;
  }

  // Two clicks to delete: the first arms the button for a few seconds.
  function confirmed(button) {
    if (button.dataset.armed) {
      disarm(button);
      return true;
    }
    button.dataset.armed = "1";
    button.dataset.label = button.textContent;
    button.textContent = "Click again to confirm";
    setTimeout(() => disarm(button), 4000);
    return false;
  }

  function disarm(button) {
    if (!button.dataset.armed) return;
    delete button.dataset.armed;
    button.textContent = button.dataset.label;
  }

  function appName() {
    const head = document.getElementById("app");
    return head ? head.dataset.app : "";
  }

  function safeNext(target) {
    // A path on this console only (as the server checks it): visible ASCII, and neither
    // "//host" nor "/\host", which would leave it.
    return target && /^\/(?![\/\\])[!-~]*$/.test(target) ? target : "/apps";
  }

  // ---- form submissions ---------------------------------------------------------------

  const forms = {
    async login(form) {
      const username = field(form, "username").value.trim();
      const password = field(form, "password").value;
      if (!username) return showError(form, "username", "Enter your user name.");
      if (!password) return showError(form, "password", "Enter your password.");
      const r = await api("POST", "/api/v1/session", { username, password });
      if (r.ok) location.href = safeNext(form.dataset.next);
      else if (r.status === 401) showError(form, "_form", "Wrong user name or password.");
      else showErrors(form, r);
    },

    async "create-app"(form) {
      const sent = {
        ports: entries(field(form, "ports").value),
        nodes: entries(field(form, "nodes").value),
      };
      const body = {
        name: field(form, "name").value.trim(),
        ports: sent.ports.map(numberOr),
        nodes: sent.nodes,
      };
      const r = await api("POST", "/api/v1/apps", body);
      if (!r.ok) return showErrors(form, r, sent);
      sessionStorage.setItem(FLASH_KEY, "App " + r.data.name + " added.");
      location.href = "/apps/" + enc(r.data.name);
    },

    async "add-node"(form) {
      const ip = field(form, "ip").value.trim();
      const r = await api("POST", "/api/v1/apps/" + enc(appName()) + "/nodes", { ip });
      if (!r.ok) return showErrors(form, r);
      flashAfterReload("Node " + r.data.ip + " added.");
    },

    async params(form) {
      const names = ["inbound_exclude_ports", "outbound_exclude_cidrs", "outbound_exclude_ports"];
      const sent = {};
      const body = {};
      for (const name of names) {
        const input = field(form, name);
        sent[name] = entries(input.value);
        body[name] = input.dataset.kind === "ranges" ? sent[name].map(numberOr) : sent[name];
      }
      const r = await api("PUT", "/api/v1/apps/" + enc(appName()) + "/params", body);
      if (!r.ok) return showErrors(form, r, sent);
      flashAfterReload("Parameters saved: every node of the app gets them now.");
    },

    async governance(form) {
      const limits = {};
      form.querySelectorAll("[data-port]").forEach((input) => {
        const value = input.value.trim();
        limits[input.dataset.port] = value === "" ? 0 : numberOr(value);
      });
      const r = await api("PUT", "/api/v1/apps/" + enc(appName()) + "/governance", { limits });
      if (!r.ok) return showErrors(form, r);
      flashAfterReload("Limits saved.");
    },

    window(form) {
      form.submit();
    },
  };

  // ---- buttons and switches -----------------------------------------------------------

  function showNode(node) {
    const row = document.querySelector('tr[data-ip="' + CSS.escape(node.ip) + '"]');
    if (!row) return;
    const input = row.querySelector('[data-action="switch"]');
    input.checked = node.hijack_enabled;
    row.querySelector(".switch .state").textContent = node.hijack_enabled ? "on" : "off";
    row.querySelector(".version").textContent = node.config_version;
  }

  const clicks = {
    async "delete-app"(button) {
      const key = "delete-" + button.dataset.app;
      if (!confirmed(button)) return;
      const r = await api("DELETE", "/api/v1/apps/" + enc(button.dataset.app));
      if (!r.ok) return showError(document, key, messageOf(r));
      flashAfterReload("App " + button.dataset.app + " deleted.");
    },

    async "remove-node"(button) {
      const ip = button.dataset.ip;
      if (!confirmed(button)) return;
      const r = await api("DELETE", "/api/v1/apps/" + enc(appName()) + "/nodes/" + enc(ip));
      if (!r.ok) return showError(document, "remove-" + ip, messageOf(r));
      flashAfterReload("Node " + ip + " removed.");
    },

    async batch(button) {
      const ips = Array.from(document.querySelectorAll("input.pick:checked"), (i) => i.value);
      if (!ips.length) return showError(document, "batch", "Select one or more nodes first.");
      const enabled = button.dataset.enabled === "true";
      const r = await api("POST", "/api/v1/apps/" + enc(appName()) + "/hijack:batch", {
        ips,
        enabled,
      });
      if (!r.ok) return showError(document, "batch", messageOf(r));
      r.data.forEach(showNode);
      flash("Hijacking " + (enabled ? "enabled" : "disabled") + " on " + ips.length + " node(s).");
    },

    async "create-key"(button) {
      const r = await api("POST", "/api/v1/keys");
      if (!r.ok) return showError(document, "create-key", messageOf(r));
      const box = document.getElementById("new-key");
      box.querySelector('[data-field="key_id"]').textContent = r.data.key_id;
      box.querySelector('[data-field="secret"]').textContent = r.data.secret;
      box.hidden = false;
      button.disabled = true;
      refresh(document.getElementById("keys"));
    },

    async "delete-key"(button) {
      const id = button.dataset.key;
      if (!confirmed(button)) return;
      const r = await api("DELETE", "/api/v1/keys/" + enc(id));
      if (!r.ok) return showError(document, "delete-" + id, messageOf(r));
      flashAfterReload("Key " + id + " deleted: agents using it are refused from now on.");
    },

    async logout() {
      await api("DELETE", "/api/v1/session");
      location.href = "/login";
    },

    async copy(button) {
      const source = document.getElementById(button.dataset.target);
      const text = source.textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {
        // No clipboard API (plain http on another host): select it for Ctrl+C instead.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
        return;
      }
      button.textContent = "Copied";
      setTimeout(() => (button.textContent = "Copy"), 2000);
    },

    reload() {
      location.reload();
    },
  };

  const changes = {
    async switch(input) {
      const ip = input.dataset.ip;
      const enabled = input.checked;
      clearErrors(input.closest("td"));
      input.disabled = true;
      const path = "/api/v1/apps/" + enc(appName()) + "/nodes/" + enc(ip) + "/hijack";
      const r = await api("PUT", path, { enabled });
      input.disabled = false;
      if (!r.ok) {
        input.checked = !enabled;
        return showError(document, "switch-" + ip, messageOf(r));
      }
      showNode(r.data);
    },

    "select-all"(input) {
      document.querySelectorAll("input.pick").forEach((i) => (i.checked = input.checked));
    },

    async scope(select) {
      const option = select.selectedOptions[0];
      if (!option || !option.dataset.tenant) return;
      const r = await api("PUT", "/api/v1/session/scope", {
        tenant: option.dataset.tenant,
        workspace: option.dataset.workspace,
        instance_id: option.dataset.instance,
      });
      if (!r.ok) return flash(messageOf(r), true);
      // Another instance has other apps: an app's page would not exist there.
      if (location.pathname.startsWith("/apps/")) location.href = "/apps";
      else location.reload();
    },
  };

  // ---- live regions -------------------------------------------------------------------

  // Re-read the page and swap in the new content of one region (same id).
  async function refresh(region) {
    if (!region || !region.id) return;
    let response;
    try {
      response = await fetch(location.href, { headers: { Accept: "text/html" } });
    } catch (_) {
      return; // try again next round
    }
    if (response.redirected && new URL(response.url).pathname === "/login") {
      location.reload();
      return;
    }
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById(region.id);
    if (fresh) region.innerHTML = fresh.innerHTML;
  }

  function startRefreshing() {
    document.querySelectorAll("[data-refresh]").forEach((region) => {
      const seconds = Number(region.dataset.refresh) || 10;
      setInterval(() => {
        if (!document.hidden) refresh(region);
      }, seconds * 1000);
    });
  }

  // ---- wiring -------------------------------------------------------------------------

  async function busy(control, work) {
    control.setAttribute("aria-busy", "true");
    try {
      await work();
    } finally {
      control.removeAttribute("aria-busy");
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    const handler = forms[form.dataset.action];
    if (!handler) return;
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector('[type="submit"]');
    if (button) button.disabled = true;
    busy(form, () => handler(form)).finally(() => {
      if (button) button.disabled = false;
    });
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || !clicks[button.dataset.action]) return;
    const row = button.closest("tr, section, form") || document;
    if (!button.dataset.armed) clearErrors(row);
    busy(button, () => clicks[button.dataset.action](button));
  });

  document.addEventListener("change", (event) => {
    const target = event.target;
    if (target.matches("select[data-autosubmit]")) {
      target.form.submit();
      return;
    }
    const handler = changes[target.dataset.action];
    if (handler) busy(target, () => handler(target));
  });

  document.addEventListener("DOMContentLoaded", () => {
    const message = sessionStorage.getItem(FLASH_KEY);
    if (message) {
      sessionStorage.removeItem(FLASH_KEY);
      flash(message);
    }
    startRefreshing();
  });
})();
