// sofamesh interception programs (bcc). Compiled once per install; every value that an
// operator can change (ports, uid, blacklists, the on/off switch) lives in a map, so a
// config change is a map write and never a reload. The only compile-time values are the
// typed defines below, set from Python integers (never from operator text).
//
//   connect4/6      cgroup: rewrite intercepted destinations to the outbound listener and
//                   remember the original destination by socket cookie
//   sockops         cgroup: once the app's connection is established, key the original
//                   destination by the app's (address, port) - what the sidecar sees as peer
//   getsockopt      cgroup: answer SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST from that map
//                   (or with the socket's own address when it was steered without NAT)
//   getpeername4/6  cgroup: the app sees the peer it dialled, not the sidecar
//   inbound         netns sk_lookup: steer intercepted ports to the inbound listener, no NAT

#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>

#ifndef SOFAMESH_MAX_CIDRS
#define SOFAMESH_MAX_CIDRS 131072
#endif
#ifndef SOFAMESH_MAX_FLOWS
#define SOFAMESH_MAX_FLOWS 65536
#endif

#define PORTS 65536
#define SK_PASS_ 1
#define AF_INET_ 2
#define AF_INET6_ 10
#define SOCK_STREAM_ 1
#define SOL_IP_ 0
#define SOL_IPV6_ 41
#define SO_ORIGINAL_DST_ 80

// Port classes (one byte per direction and port): what a connection to that port gets.
#define CLASS_DIRECT 0   // not intercepted (1..1024 except 80)
#define CLASS_SSH 1      // SSH: never intercepted
#define CLASS_PROXY 2    // the sidecar's own ports
#define CLASS_EXCLUDED 3 // in the port blacklist
#define CLASS_INTERCEPT 4

// Hit counters, one slot per rule (the Python side names them; keep in step).
#define HIT_IN_LOOPBACK 0
#define HIT_IN_SIDECAR_SOURCE 1
#define HIT_IN_SSH 2
#define HIT_IN_PROXY_PORTS 3
#define HIT_IN_EXCLUDED_PORTS 4
#define HIT_IN_INTERCEPT 5
#define HIT_IN_REDIRECT 6
#define HIT_IN_FAIL_OPEN 7
#define HIT_OUT_PROXY 8
#define HIT_OUT_LOOPBACK 9
#define HIT_OUT_CONSOLE 10
#define HIT_OUT_SSH 11
#define HIT_OUT_PROXY_PORTS 12
#define HIT_OUT_EXCLUDED_CIDRS 13
#define HIT_OUT_EXCLUDED_PORTS 14
#define HIT_OUT_INTERCEPT 15
#define HIT_OUT_REDIRECT 16
#define HIT_OUT_FAIL_OPEN 17
#define HIT_SLOTS 18

struct settings {
    u32 enabled;     // 0: every program lets everything through (parked / switched off)
    u32 generation;  // which half of the port and CIDR maps is live (0 or 1)
    u32 proxy_uid;   // loop guard: the sidecar's connections are never rewritten
    u32 ipv6;        // intercept IPv6 as well
    u16 in_port;     // the sidecar's inbound listener
    u16 out_port;    // the sidecar's outbound listener
    u32 pad;
};

struct port_class {
    u8 in;
    u8 out;
};

struct cidr4_key {
    u32 prefixlen;  // 8 (generation byte) + the CIDR's prefix length
    u8 generation;
    u8 addr[4];
} __attribute__((packed));

struct cidr6_key {
    u32 prefixlen;
    u8 generation;
    u8 addr[16];
} __attribute__((packed));

// An address in IPv6 form (IPv4 as ::ffff:a.b.c.d) and a port in host order.
struct endpoint {
    u32 addr[4];
    u16 port;
    u16 pad;
};

struct console_key {
    u32 addr[4];
    u16 port;
    u16 pad;
};

BPF_ARRAY(settings, struct settings, 1);
BPF_ARRAY(ports, struct port_class, 2 * PORTS);
BPF_F_TABLE("lpm_trie", struct cidr4_key, u8, cidr4, SOFAMESH_MAX_CIDRS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct cidr6_key, u8, cidr6, SOFAMESH_MAX_CIDRS, BPF_F_NO_PREALLOC);
BPF_HASH(console, struct console_key, u8, 64);
BPF_ARRAY(hits, u64, HIT_SLOTS);
// [0]: the hash of this source the programs were built from (an upgrade reloads them).
BPF_ARRAY(meta, u64, 1);
BPF_TABLE("lru_hash", u64, struct endpoint, by_cookie, SOFAMESH_MAX_FLOWS);
BPF_TABLE("lru_hash", struct endpoint, struct endpoint, by_source, SOFAMESH_MAX_FLOWS);
// The sidecar's inbound listening sockets: slot 0 takes IPv4, slot 1 IPv6. A socket that
// closes leaves the map by itself, and then inbound traffic reaches the app (fail open).
// (bcc's BPF_SOCKMAP has no lookup member; sk_lookup needs one: same table, plus lookup.)
struct inbound_sockets_table_t {
    u32 key;
    u64 leaf;  // 8 bytes: user space reads back the socket's cookie (4 bytes cannot)
    u64 *(*lookup)(u32 *);
    int (*sock_map_update)(void *, void *, u64);
    u32 max_entries;
};
__attribute__((section("maps/sockmap"))) struct inbound_sockets_table_t inbound_sockets = {
    .max_entries = 2};
BPF_ANNOTATE_KV_PAIR(inbound_sockets, u32, u64);

static __always_inline void hit(u32 slot) {
    u64 *count = hits.lookup(&slot);
    if (count)
        __sync_fetch_and_add(count, 1);
}

static __always_inline struct settings *live(void) {
    u32 zero = 0;
    struct settings *s = settings.lookup(&zero);
    if (!s || !s->enabled)
        return 0;
    return s;
}

static __always_inline struct port_class *class_of(struct settings *s, u16 port) {
    u32 key = (s->generation & 1) * PORTS + port;
    return ports.lookup(&key);
}

static __always_inline int is_mapped_v4(const u32 *addr) {
    return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff);
}

// The decision shared by connect4 and connect6 once the address family is settled.
// Returns 1 when the connection must go to the sidecar.
static __always_inline int outbound_intercepted(struct settings *s, struct endpoint *dst, int v4) {
    u32 uid = bpf_get_current_uid_gid() & 0xffffffff;
    if (uid == s->proxy_uid) {
        hit(HIT_OUT_PROXY);
        return 0;
    }
    if (v4 ? (bpf_ntohl(dst->addr[3]) >> 24) == 127
           : (dst->addr[0] == 0 && dst->addr[1] == 0 && dst->addr[2] == 0 &&
              dst->addr[3] == bpf_htonl(1))) {
        hit(HIT_OUT_LOOPBACK);
        return 0;
    }
    struct console_key ck = {};
    __builtin_memcpy(ck.addr, dst->addr, sizeof(ck.addr));
    ck.port = dst->port;
    if (console.lookup(&ck)) {
        hit(HIT_OUT_CONSOLE);
        return 0;
    }
    struct port_class *pc = class_of(s, dst->port);
    u8 cls = pc ? pc->out : CLASS_DIRECT;
    if (cls == CLASS_SSH) {
        hit(HIT_OUT_SSH);
        return 0;
    }
    if (cls == CLASS_PROXY) {
        hit(HIT_OUT_PROXY_PORTS);
        return 0;
    }
    if (v4) {
        struct cidr4_key key = {.prefixlen = 40, .generation = s->generation & 1};
        __builtin_memcpy(key.addr, &dst->addr[3], 4);
        if (cidr4.lookup(&key)) {
            hit(HIT_OUT_EXCLUDED_CIDRS);
            return 0;
        }
    } else {
        struct cidr6_key key = {.prefixlen = 136, .generation = s->generation & 1};
        __builtin_memcpy(key.addr, dst->addr, 16);
        if (cidr6.lookup(&key)) {
            hit(HIT_OUT_EXCLUDED_CIDRS);
            return 0;
        }
    }
    if (cls == CLASS_EXCLUDED) {
        hit(HIT_OUT_EXCLUDED_PORTS);
        return 0;
    }
    if (cls != CLASS_INTERCEPT)
        return 0;
    hit(HIT_OUT_INTERCEPT);
    return 1;
}

// Fail open: rewrite only when the outbound listener exists in this namespace, so a
// sidecar that is down never turns into refused connections.
static __always_inline int outbound_listener_up(struct bpf_sock_addr *ctx, struct settings *s,
                                                int v4) {
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk;
    if (v4) {
        t.ipv4.daddr = bpf_htonl(0x7f000001);
        t.ipv4.dport = bpf_htons(s->out_port);
        sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    } else {
        t.ipv6.daddr[3] = bpf_htonl(1);
        t.ipv6.dport = bpf_htons(s->out_port);
        sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
    }
    if (!sk)
        return 0;
    bpf_sk_release(sk);
    return 1;
}

// A context field read exactly once, where it is written (see sock_endpoint).
#define CTX_READ(expr) (*(volatile __typeof__(expr) *)&(expr))

// Every field is read whatever the family and the family picks among the values: with a
// read per branch, clang merges the two loads into one at a computed offset, which the
// verifier refuses.
static __always_inline void sock_endpoint(u32 family, u32 ip4, u32 a0, u32 a1, u32 a2, u32 a3,
                                          u16 port, struct endpoint *e) {
    int v4 = family == AF_INET_;
    e->addr[0] = v4 ? 0 : a0;
    e->addr[1] = v4 ? 0 : a1;
    e->addr[2] = v4 ? bpf_htonl(0xffff) : a2;
    e->addr[3] = v4 ? ip4 : a3;
    e->port = port;
}

int connect4(struct bpf_sock_addr *ctx) {
    if (ctx->type != SOCK_STREAM_)
        return 1;
    struct settings *s = live();
    if (!s)
        return 1;
    struct endpoint dst = {};
    dst.addr[2] = bpf_htonl(0xffff);
    dst.addr[3] = ctx->user_ip4;
    dst.port = bpf_ntohs(ctx->user_port);
    if (!outbound_intercepted(s, &dst, 1))
        return 1;
    if (!outbound_listener_up(ctx, s, 1)) {
        hit(HIT_OUT_FAIL_OPEN);
        return 1;
    }
    u64 cookie = bpf_get_socket_cookie(ctx);
    by_cookie.update(&cookie, &dst);
    ctx->user_ip4 = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons(s->out_port);
    hit(HIT_OUT_REDIRECT);
    return 1;
}

int connect6(struct bpf_sock_addr *ctx) {
    if (ctx->type != SOCK_STREAM_)
        return 1;
    struct settings *s = live();
    if (!s)
        return 1;
    struct endpoint dst = {};
    dst.addr[0] = ctx->user_ip6[0];
    dst.addr[1] = ctx->user_ip6[1];
    dst.addr[2] = ctx->user_ip6[2];
    dst.addr[3] = ctx->user_ip6[3];
    dst.port = bpf_ntohs(ctx->user_port);
    // A dual-stack socket dialling an IPv4 address follows the IPv4 rules.
    int v4 = is_mapped_v4(dst.addr);
    if (!v4 && !s->ipv6)
        return 1;
    if (!outbound_intercepted(s, &dst, v4))
        return 1;
    if (!outbound_listener_up(ctx, s, v4)) {
        hit(HIT_OUT_FAIL_OPEN);
        return 1;
    }
    u64 cookie = bpf_get_socket_cookie(ctx);
    by_cookie.update(&cookie, &dst);
    if (v4) {
        ctx->user_ip6[3] = bpf_htonl(0x7f000001);
    } else {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = bpf_htonl(1);
    }
    ctx->user_port = bpf_htons(s->out_port);
    hit(HIT_OUT_REDIRECT);
    return 1;
}

// A sidecar that (re)starts and listens on the inbound port takes over inbound steering at
// once: its socket goes into the map the moment it listens, with no agent involved.
static __always_inline void register_listener(struct bpf_sock_ops *skops) {
    u32 zero = 0;
    struct settings *s = settings.lookup(&zero);
    if (!s || CTX_READ(skops->local_port) != s->in_port)
        return;
    u32 slot = CTX_READ(skops->family) == AF_INET_ ? 0 : 1;
    inbound_sockets.sock_map_update(skops, &slot, BPF_ANY);
}

int sockops(struct bpf_sock_ops *skops) {
    if (skops->op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
        register_listener(skops);
        return 1;
    }
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    struct endpoint src = {};
    sock_endpoint(CTX_READ(skops->family), CTX_READ(skops->local_ip4),
                  CTX_READ(skops->local_ip6[0]), CTX_READ(skops->local_ip6[1]),
                  CTX_READ(skops->local_ip6[2]), CTX_READ(skops->local_ip6[3]),
                  CTX_READ(skops->local_port), &src);
    u64 cookie = bpf_get_socket_cookie(skops);
    struct endpoint *orig = by_cookie.lookup(&cookie);
    if (orig) {
        struct endpoint copy = *orig;
        by_source.update(&src, &copy);
        by_cookie.delete(&cookie);
    } else {
        // This source address and port now belong to a connection we did not redirect:
        // forget any older one that used them, so the sidecar never reads a stale entry.
        by_source.delete(&src);
    }
    return 1;
}

// Socket fields by offset: bcc would turn `sk->field` into a probe read of a computed
// address, and the verifier refuses pointer arithmetic on a socket pointer; a plain load
// at a constant offset is what it accepts.
#define SK_READ(sk, field)                                                                \
    (*(volatile __typeof__(((struct bpf_sock *)0)->field) *)((unsigned long)(sk) +      \
                                                             offsetof(struct bpf_sock, field)))

static __always_inline void sock_source(struct bpf_sock *sk, struct endpoint *e) {
    sock_endpoint(SK_READ(sk, family), SK_READ(sk, src_ip4), SK_READ(sk, src_ip6[0]),
                  SK_READ(sk, src_ip6[1]), SK_READ(sk, src_ip6[2]), SK_READ(sk, src_ip6[3]),
                  SK_READ(sk, src_port), e);
}

static __always_inline void sock_peer(struct bpf_sock *sk, struct endpoint *e) {
    sock_endpoint(SK_READ(sk, family), SK_READ(sk, dst_ip4), SK_READ(sk, dst_ip6[0]),
                  SK_READ(sk, dst_ip6[1]), SK_READ(sk, dst_ip6[2]), SK_READ(sk, dst_ip6[3]),
                  bpf_ntohs(SK_READ(sk, dst_port)), e);
}

struct sockaddr_in_ {
    u16 family;
    u16 port;
    u32 addr;
    u8 zero[8];
};

struct sockaddr_in6_ {
    u16 family;
    u16 port;
    u32 flowinfo;
    u32 addr[4];
    u32 scope_id;
};

int getsockopt(struct bpf_sockopt *ctx) {
    if (ctx->optname != SO_ORIGINAL_DST_ || (ctx->level != SOL_IP_ && ctx->level != SOL_IPV6_))
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk || SK_READ(sk, protocol) != IPPROTO_TCP)
        return 1;
    struct endpoint peer = {};
    struct endpoint local = {};
    sock_peer(sk, &peer);
    sock_source(sk, &local);
    struct endpoint *orig = by_source.lookup(&peer);
    struct endpoint answer;
    if (orig) {
        answer = *orig;
    } else if (ctx->retval != 0) {
        // No NAT and no redirect record: the connection reached this socket at the address
        // the peer dialled (sk_lookup steering, or not intercepted), as conntrack would say.
        answer = local;
    } else {
        return 1;  // the kernel's own answer (someone's NAT) stands
    }
    int v4 = is_mapped_v4(answer.addr);
    if (ctx->level == SOL_IP_) {
        if (!v4)
            return 1;
        struct sockaddr_in_ *out = ctx->optval;
        if ((void *)(out + 1) > ctx->optval_end)
            return 1;
        out->family = AF_INET_;
        out->port = bpf_htons(answer.port);
        out->addr = answer.addr[3];
        __builtin_memset(out->zero, 0, sizeof(out->zero));
        ctx->optlen = sizeof(*out);
    } else {
        if (v4)
            return 1;
        struct sockaddr_in6_ *out6 = ctx->optval;
        if ((void *)(out6 + 1) > ctx->optval_end)
            return 1;
        out6->family = AF_INET6_;
        out6->port = bpf_htons(answer.port);
        out6->flowinfo = 0;
        out6->addr[0] = answer.addr[0];
        out6->addr[1] = answer.addr[1];
        out6->addr[2] = answer.addr[2];
        out6->addr[3] = answer.addr[3];
        out6->scope_id = 0;
        ctx->optlen = sizeof(*out6);
    }
    ctx->retval = 0;
    return 1;
}

// The app asked who its peer is: on a redirected connection, answer the original peer.
static __always_inline struct endpoint *redirected_peer(struct bpf_sock_addr *ctx) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    struct endpoint src = {};
    sock_source(sk, &src);
    return by_source.lookup(&src);
}

int getpeername4(struct bpf_sock_addr *ctx) {
    u32 zero = 0;
    struct settings *s = settings.lookup(&zero);
    if (!s || ctx->user_ip4 != bpf_htonl(0x7f000001) || ctx->user_port != bpf_htons(s->out_port))
        return 1;
    struct endpoint *orig = redirected_peer(ctx);
    if (orig && is_mapped_v4(orig->addr)) {
        ctx->user_ip4 = orig->addr[3];
        ctx->user_port = bpf_htons(orig->port);
    }
    return 1;
}

int getpeername6(struct bpf_sock_addr *ctx) {
    u32 zero = 0;
    struct settings *s = settings.lookup(&zero);
    if (!s || ctx->user_port != bpf_htons(s->out_port))
        return 1;
    struct endpoint *orig = redirected_peer(ctx);
    if (orig) {
        ctx->user_ip6[0] = orig->addr[0];
        ctx->user_ip6[1] = orig->addr[1];
        ctx->user_ip6[2] = orig->addr[2];
        ctx->user_ip6[3] = orig->addr[3];
        ctx->user_port = bpf_htons(orig->port);
    }
    return 1;
}

int inbound(struct bpf_sk_lookup *ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return SK_PASS_;
    struct settings *s = live();
    if (!s)
        return SK_PASS_;
    u32 slot = 0;
    if (ctx->family == AF_INET_) {
        if ((bpf_ntohl(ctx->local_ip4) >> 24) == 127) {
            hit(HIT_IN_LOOPBACK);
            return SK_PASS_;
        }
        if (ctx->remote_ip4 == bpf_htonl(0x7f000006)) {
            hit(HIT_IN_SIDECAR_SOURCE);
            return SK_PASS_;
        }
    } else {
        if (!s->ipv6)
            return SK_PASS_;
        if (ctx->local_ip6[0] == 0 && ctx->local_ip6[1] == 0 && ctx->local_ip6[2] == 0 &&
            ctx->local_ip6[3] == bpf_htonl(1)) {
            hit(HIT_IN_LOOPBACK);
            return SK_PASS_;
        }
        if (ctx->remote_ip6[0] == 0 && ctx->remote_ip6[1] == 0 && ctx->remote_ip6[2] == 0 &&
            ctx->remote_ip6[3] == bpf_htonl(6)) {
            hit(HIT_IN_SIDECAR_SOURCE);
            return SK_PASS_;
        }
        slot = 1;
    }
    struct port_class *pc = class_of(s, ctx->local_port);
    u8 cls = pc ? pc->in : CLASS_DIRECT;
    if (cls == CLASS_SSH) {
        hit(HIT_IN_SSH);
        return SK_PASS_;
    }
    if (cls == CLASS_PROXY) {
        hit(HIT_IN_PROXY_PORTS);
        return SK_PASS_;
    }
    if (cls == CLASS_EXCLUDED) {
        hit(HIT_IN_EXCLUDED_PORTS);
        return SK_PASS_;
    }
    if (cls != CLASS_INTERCEPT)
        return SK_PASS_;
    hit(HIT_IN_INTERCEPT);
    struct bpf_sock *sk = (struct bpf_sock *)inbound_sockets.lookup(&slot);
    if (!sk) {
        hit(HIT_IN_FAIL_OPEN);  // the sidecar's socket is gone: the app gets it directly
        return SK_PASS_;
    }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        hit(HIT_IN_FAIL_OPEN);
        return SK_PASS_;
    }
    hit(HIT_IN_REDIRECT);
    return SK_PASS_;
}
