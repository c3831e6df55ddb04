"""Stage: generation. Batched, left-padded prompts decoded with a KV cache (``decode``); responses
extracted with the model's template and written next to their records."""

from heed.generate.responses import generate_ids, generate_responses, make_decoder, responses_path, with_responses

__all__ = ["generate_ids", "generate_responses", "make_decoder", "responses_path", "with_responses"]
