"""Training: the module being trained, its step engine, and what a run leaves behind.

`module.LPIPSModule` says what is trained and how it is scored; `steps.Steps` what a training
step does; `graphs`, `tally` and `cadence` how it runs fast (CUDA graphs, values read back
only when logged, Lightning's step counting); `links` what the data module is told;
`callbacks`, `loggers`, `runs` and `resume` the run folder, its logs and its resumption.
"""
