from heed.cli import entry

entry()
