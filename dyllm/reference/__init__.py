"""Reference models: the task suites, the trainer, and the small checkpoints dyllm ships.

`tasks` (and `long_tasks`, 128-token answers) generates seeded problems with exact answers and
the fixed held-out sets, `scoring` grades answers, `train` fits a LLaDA- or Dream-layout model
with the masked diffusion objective, `evaluate` scores a checkpoint with
`dyllm.generation.generate`, and `registry` maps the built-in names `llada-ref`, `dream-ref` and
`llada-long` to the checkpoints under `checkpoints/`.
"""
