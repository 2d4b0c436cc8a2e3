"""The lowest layer: errors, atomic files, metrics, devices, result identity; imports nothing of the harness."""
