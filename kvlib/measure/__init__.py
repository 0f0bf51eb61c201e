"""Measuring instruments: what a step costs and how fast it runs.

- `flops`: analytic FLOPs per step and per generation, checked with FlopCounterMode;
- `memory`, `allocation`, `padding`, `waste`: KV-cache bytes by formula, the bytes really held and allocated,
  what left padding costs, and the share of reserved KV memory that holds tokens (contiguous vs paged);
- `timing`: synchronized clocks and sweeps; `compiled`: the fixed-shape decode step for torch.compile;
- `bench`: `python -m kvlib.measure.bench` (decode timing; `serving` for the serving engines);
- `shrink`: `python -m kvlib.measure.shrink`, the quality sweep of the smaller caches;
- `figures`: where figures are saved and how a device is named.

May import: the library (kvlib.config, attention, cache, model, serving) and kvlib.shakespeare; never
kvlib.teaching.
"""
