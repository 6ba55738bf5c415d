"""The usage ledger: one record per request, the batched writer, per-minute/hour/day aggregates
and the reads over them, retention, prices and Prometheus metrics."""
