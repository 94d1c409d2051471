"""hijack."""
