"""chunked_unisd_loss equals the reference unisd_loss, value and gradients,
without ever holding full-vocabulary logits (DESIGN §3, memory)."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from student.config import LossConfig
from student.losses import chunked_unisd_loss, unisd_loss

B, T, V, H = 3, 7, 50, 16
# rows hold 5, 7 and 3 target tokens: N = 15 weighted tokens (row 1 has weight 0.5)
LENGTHS = (5, 7, 3)


def inputs(K, *, dtype=torch.float32, trainable_head=True, seed=0, vocab=V):
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(H, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, H, generator=gen) * 0.4)
    head = head.to(dtype).requires_grad_(trainable_head)
    labels = torch.randint(0, vocab, (B, T), generator=gen)
    for b, n in enumerate(LENGTHS):
        labels[b, n:] = -100
    return dict(
        head=head,
        student_hidden=torch.randn(B, T, H, generator=gen).to(dtype).requires_grad_(),
        teacher_hidden=torch.randn(K, B, T, H, generator=gen).to(dtype),
        negative_hidden=torch.randn(B, T, H, generator=gen).to(dtype),
        labels=labels,
        token_weight=torch.tensor([1.0, 0.5, 2.0]).view(B, 1).expand(B, T),
        has_negative=torch.tensor([True, False, True]),
    )


def reference(cfg, x, negatives=True):
    head = x["head"]
    with torch.no_grad():
        t_logits = head(x["teacher_hidden"])
        n_logits = head(x["negative_hidden"]) if negatives else None
    return unisd_loss(cfg, student_logits=head(x["student_hidden"]), labels=x["labels"], token_weight=x["token_weight"],
                      teacher_logits=t_logits, negative_logits=n_logits,
                      has_negative=x["has_negative"] if negatives else None,
                      student_hidden=x["student_hidden"], teacher_hidden=x["teacher_hidden"][0])


def chunked(cfg, x, chunk_size, negatives=True):
    return chunked_unisd_loss(cfg, student_hidden=x["student_hidden"], student_head=x["head"], labels=x["labels"],
                              token_weight=x["token_weight"], teacher_hidden=x["teacher_hidden"], teacher_head=x["head"],
                              negative_hidden=x["negative_hidden"] if negatives else None,
                              has_negative=x["has_negative"] if negatives else None, chunk_size=chunk_size)


def grads(total, x):
    wrt = [x["student_hidden"]] + [p for p in x["head"].parameters() if p.requires_grad]
    # a term that never touches the head (feature matching alone) leaves its gradient None: count it 0
    return [torch.zeros_like(p) if g is None else g for g, p in zip(torch.autograd.grad(total, wrt, allow_unused=True), wrt)]


def assert_equal(cfg, x, chunk_size, negatives=True, rtol=1e-5, atol=1e-5):
    want, want_terms = reference(cfg, x, negatives)
    got, got_terms = chunked(cfg, x, chunk_size, negatives)
    assert set(got_terms) == set(want_terms)
    for k, v in want_terms.items():
        assert got_terms[k] == pytest.approx(v, rel=rtol, abs=atol), k
    for g, w in zip(grads(got, x), grads(want, x), strict=True):
        assert torch.isfinite(g).all()
        scale = float(w.abs().max())
        torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol * max(1.0, scale))


FULL = dict(sft=1.0, kd=1.0, contrastive=0.7, feature=0.3, alpha=0.5, agreement_gamma=2.0)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 64])  # 4 does not divide N = 15, 5 does, 64 > N
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("negatives", [True, False])
@pytest.mark.parametrize("clip", ["static", "quantile"])
@pytest.mark.parametrize("trainable_head", [True, False])
def test_value_and_gradients_equal_the_reference_fp32(chunk_size, K, negatives, clip, trainable_head):
    # a low static clip so that some tokens are clipped (and get no gradient) on both paths
    clipping = dict(clip=0.3, clip_quantile=None) if clip == "static" else dict(clip=None, clip_quantile=0.8)
    cfg = LossConfig(**FULL, **clipping, num_contexts=K)
    assert_equal(cfg, inputs(K, trainable_head=trainable_head), chunk_size, negatives)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_alpha_and_temperature(alpha, temperature):
    cfg = LossConfig(**{**FULL, "alpha": alpha}, temperature=temperature, clip=None, num_contexts=2)
    assert_equal(cfg, inputs(2), 4)


@pytest.mark.parametrize("weights", [dict(sft=1.0, kd=0.0), dict(sft=0.0, kd=1.0), dict(sft=0.0, kd=0.0, contrastive=1.0),
                                     dict(sft=0.0, kd=0.0, feature=1.0)], ids=["sft", "kd", "contrastive", "feature"])
def test_each_term_alone(weights):
    assert_equal(LossConfig(**weights, num_contexts=2), inputs(2), 4)


def test_head_tied_to_the_embeddings_gets_both_gradients():
    """A tied LM head (full fine-tuning of a tied model): the embedding weight is
    used for the student's hidden states and as the head; its gradient sums both."""
    gen = torch.Generator().manual_seed(1)
    emb = nn.Embedding(V, H)
    head = nn.Linear(H, V, bias=False)
    head.weight = emb.weight
    ids = torch.randint(0, V, (B, T), generator=gen)
    labels = ids.roll(-1, dims=1)
    labels[0, 4:] = -100
    t_hidden = torch.randn(2, B, T, H, generator=gen)
    cfg = LossConfig(**FULL, num_contexts=2)

    def run(fn):
        emb.weight.grad = None
        hidden = torch.tanh(emb(ids))
        if fn == "reference":
            with torch.no_grad():
                t_logits = head(t_hidden)
            total, _ = unisd_loss(cfg, student_logits=head(hidden), labels=labels, teacher_logits=t_logits,
                                  student_hidden=hidden, teacher_hidden=t_hidden[0])
        else:
            total, _ = chunked_unisd_loss(cfg, student_hidden=hidden, student_head=head, labels=labels,
                                          teacher_hidden=t_hidden, teacher_head=head, chunk_size=3)
        total.backward()
        return emb.weight.grad.clone()

    torch.testing.assert_close(run("chunked"), run("reference"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trainable_head", [True, False])
def test_bf16_tensors_within_bf16_tolerance(trainable_head):
    cfg = LossConfig(**FULL, clip_quantile=0.9, num_contexts=2)
    assert_equal(cfg, inputs(2, dtype=torch.bfloat16, trainable_head=trainable_head), 4, rtol=2e-2, atol=2e-2)


def test_under_cpu_autocast_including_the_recompute_in_backward():
    """The trainer runs the loss under bf16 autocast: the head is a bf16 matmul on
    both paths, and the backward recompute of a trainable head uses it too."""
    cfg = LossConfig(**FULL, num_contexts=2)
    x = inputs(2, trainable_head=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_equal(cfg, x, 4, rtol=2e-2, atol=2e-2)


def test_zero_target_tokens_give_zero_with_grad_and_no_nan():
    x = inputs(2)
    x["labels"] = torch.full((B, T), -100)
    cfg = LossConfig(**FULL, clip_quantile=0.9, num_contexts=2)
    total, terms = chunked(cfg, x, 4)
    assert total.item() == 0 and total.requires_grad and terms["tokens"] == 0
    assert all(v == 0 for v in terms.values())
    total.backward()
    assert (x["student_hidden"].grad == 0).all()
    assert x["head"].weight.grad is None or (x["head"].weight.grad == 0).all()


def test_no_grad_gives_the_same_value():
    cfg = LossConfig(**FULL, num_contexts=3)
    x = inputs(3)
    with torch.no_grad():
        got, _ = chunked(cfg, x, 4)
        want, _ = reference(cfg, x)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_missing_inputs_and_bad_chunk_size_are_errors():
    x = inputs(1)
    with pytest.raises(ValueError, match="teacher hidden"):
        chunked_unisd_loss(LossConfig(kd=1.0), student_hidden=x["student_hidden"], student_head=x["head"], labels=x["labels"])
    with pytest.raises(ValueError, match="hidden states"):
        chunked_unisd_loss(LossConfig(kd=0.0, feature=1.0), student_hidden=x["student_hidden"], student_head=x["head"],
                           labels=x["labels"])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(LossConfig(), x, 0)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op (forward or backward) returns."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("trainable_head", [True, False])
def test_no_full_vocabulary_tensor_is_created_in_forward_or_backward(trainable_head):
    """The largest tensor of the chunked loss is one chunk's [C, V] logits (or the
    head's weight): never [B, T, V], let alone [K, B, T, V] (which the reference builds)."""
    K, C, vocab = 3, 4, 1000
    x = inputs(K, trainable_head=trainable_head, vocab=vocab)
    cfg = LossConfig(**FULL, clip_quantile=0.9, num_contexts=K)
    with LargestTensor() as probe:
        total, _ = chunked(cfg, x, C)
        total.backward()
    # the largest: one chunk of logits, or the head weight [V, H] (and its gradient)
    assert probe.numel <= max(C * vocab, vocab * H) < B * T * vocab
    with LargestTensor() as ref:
        reference(cfg, x)[0].backward()
    assert ref.numel >= K * B * T * vocab  # the probe sees what the reference materialises
