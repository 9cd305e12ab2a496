"""Reference models: the task suite, the trainer, and the two small checkpoints dyllm ships.

`tasks` generates seeded problems with exact answers and the fixed held-out sets, `scoring`
grades answers, `train` fits a LLaDA- or Dream-layout model with the masked diffusion objective,
`evaluate` scores a checkpoint with `dyllm.generation.generate`, and `registry` maps the built-in
names `llada-ref` and `dream-ref` to the checkpoints under `checkpoints/`.
"""
