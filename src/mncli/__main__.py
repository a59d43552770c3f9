from mncli.cli.app import entry

entry()
