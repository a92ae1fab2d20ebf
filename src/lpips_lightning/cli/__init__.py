"""The command line: a table of commands (`main`), LightningCLI for training, the tool commands."""
