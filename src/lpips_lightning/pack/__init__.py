"""Judgments sources turned into one judgments file: BAPPS folders or archives, CSVs; and BAPPS downloads.

`pack.pack` is the entry point (``lpips-lightning pack``); `sources` says what a SOURCE is,
`bapps` holds the data set's facts, `download` fetches its archives (``lpips-lightning download``).
"""
