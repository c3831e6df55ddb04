"""The command layer: ``heed``'s subcommands, the finetune job, the demo and the benchmark. Commands parse
flags into configs and call the stages; no stage imports from here."""
