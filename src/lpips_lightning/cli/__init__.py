"""The command line: `main` (the command table), `training` (LightningCLI), `tools` and `distance` (typed functions).

`parser` is the one-line-error parser every command shares; `checks` what a training command
line is refused for before anything is built.
"""
