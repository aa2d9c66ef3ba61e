"""RQ jobs. Each takes ids, reloads and re-checks state, and is safe to run twice."""
