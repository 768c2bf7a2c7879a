"""The pieces of benchmarks/coco_scale.py, one job each: measure (one command in its own process, seen from
outside), snippets (the loader and index probes run as `python -c`), steps (the commands of the rehearsal),
report (the memory ratios, the markdown table, the JSON written after every step)."""
