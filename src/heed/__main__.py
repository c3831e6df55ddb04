from heed.commands.cli import entry

entry()
