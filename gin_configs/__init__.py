"""The project's gin files, shipped with the package as T5X ships `t5x/configs`.

`models/` (a T5 size), `prompts/` (a prompt parameterization), `runs/` (train, eval, infer) and
`t5x/{models,runs}/` (the same under T5X's binaries), each a package, so gin's resource reader
finds `gin_configs/runs/...gin` on the Python path; the entry points also put the folder holding
this package on gin's search path (`prompt_tuning.train.gin_utils.gin_search_root`).
`--gin_file=gin_configs/...` and `include "gin_configs/..."` resolve from any working directory,
in a checkout or an installed package.
"""
