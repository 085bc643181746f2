"""PIE-Bench: data format (`data`), and (later) the resumable runner, metrics and report."""
