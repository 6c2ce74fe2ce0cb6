"""Computed tags (docs/compute.md): expressions, window functions, totalizers, rates, smoothing and
redundant-sensor voting over other tags, stored and delivered exactly like measured ones.

- `config`: the `[[computed]]` structs (checked alone);
- `parse`: the expression grammar (a Pratt parser) and its compiler, unit-aware;
- `plan`: every computed tag resolved against the whole config (references, units, cycles);
- `functions`: the calculations and the quality rules;
- `engine`: feeds them with the samples about to be stored, in dependency order.
"""
