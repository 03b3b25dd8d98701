"""Teachers reached through LiteLLM: client, cache, retries, rate limits, cost, agreement.

Never imports torch.  LiteLLM would fetch a price list from the network at import
unless told to use its bundled copy, so set that before anything imports it."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
