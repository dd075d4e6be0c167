"""The sections of the run's schema, by area; `tfsft.config` assembles them into `RunConfig` and is the import path
for all of them (with loading, `--set` overrides and error messages).

- `base`      `Section`: unknown keys are errors
- `inputs`    task, data, text, image, model (backbone and head)
- `training`  freezing, optimizer, schedule, regularization, training loop, distribution
- `outputs`   evaluation, export, logging and progress, tracking
- `tune`      the search space and tuner of `python -m tfsft.tune`

No module here imports TensorFlow or Keras: config errors surface in a second.
"""
