"""The `tiny` student: a randomly initialised 2-layer, 64-dim Llama decoder and a
character-level tokenizer, both built in code (no files, no hub).

It exists so that every test and the `tiny` preset can run the real code path
(LoRA adapters, chat template, batched generation, training) in milliseconds.
The tokenizer is a real `tokenizers.Tokenizer` wrapped in
`PreTrainedTokenizerFast`, and the chat template is ChatML like SmolLM2's, so
the same prompting helpers serve the tiny model and real ones.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# ChatML, the format SmolLM2-Instruct uses; eos is <|im_end|> so generation
# stops at the end of the assistant's turn.
from student.chat import CHATML_TEMPLATE as CHAT_TEMPLATE
from student.chat import NO_LENGTH_LIMIT

# Special tokens first so their ids are stable (pad=0, unk=1, bos=2, eos=3).
PAD, UNK, BOS, EOS, IM_START = "<|pad|>", "<|unk|>", "<|bos|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IM_START]

# Printable ASCII (digits, letters, punctuation, space) plus newline/tab and a
# few characters that word problems commonly contain; anything else maps to UNK.
CHARACTERS = (
    list(string.digits + string.ascii_letters + string.punctuation + " ")
    + ["\n", "\t"]
    + list("€£°×÷–—’‘“”…")
)



def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: every character is one token.

    BPE with no merges over a character vocabulary splits any text into single
    characters; the Fuse decoder joins them back without inserted spaces, so
    decode(encode(text)) == text for covered characters.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="left",
        model_max_length=NO_LENGTH_LIMIT,  # the length rule is the student's (student/lengths.py)
    )
    fast.add_special_tokens({"additional_special_tokens": [IM_START]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, max_length: int = 512) -> LlamaForCausalLM:
    """A 2-layer, 64-dim Llama decoder with random weights drawn from `seed`.

    The global RNG is forked so loading the tiny model never changes the
    caller's random stream (tests and the trainer seed their own).
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(max_length, 512),
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,  # tied, the random model only repeats its last input token ("\n")
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
