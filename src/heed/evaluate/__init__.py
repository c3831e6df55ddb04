"""Stage 7: evaluation — reference metrics, task verifiers, judges and reports."""
