"""Dolphin on tiny random Llamas: the splice, batches, the KV cache, training, export and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesmith.errors import BadInputError, UsageError
from edgesmith.dolphin.lora import LoRALinear
from edgesmith.dolphin.model import Dolphin
from edgesmith.dolphin.options import DolphinOptions
from edgesmith.dolphin.tokens import PLACEHOLDER, left_pad
from edgesmith.dolphin.train import continuation_perplexity, encoder_inputs, train

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n"


class CharTokenizer:
    """One token per character of ALPHABET, ids from ``offset``: two of them disagree on every id."""

    def __init__(self, offset: int):
        self.offset, self.eos_token_id = offset, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.offset + ALPHABET.index(c) for c in text if c in ALPHABET]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(ALPHABET[i - self.offset] for i in ids if 0 <= i - self.offset < len(ALPHABET))

    def get_vocab(self):
        return {c: self.offset + i for i, c in enumerate(ALPHABET)}


def tiny_lm(name: str, hidden: int = 32, vocab: int = 97, layers: int = 3, seed: int = 0, positions: int = 96):
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgesmith.models.hf import wrap_model
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                         max_position_embeddings=positions)
    module = wrap_model(LlamaForCausalLM(config).eval(), ["input_ids"], "logits").eval()
    return Variant(name=name, module=module, inputs=[TensorSpec("input_ids", (1, 8), "int64")],
                   outputs=[TensorSpec("logits", (1, 8, vocab), "float32")],
                   example={"input_ids": np.zeros((1, 8), np.int64)},
                   source={"reference": f"test:{name}", "format": "test", "sha256": name}, task="lm")


@pytest.fixture(scope="module")
def decoder():
    return tiny_lm("tiny-decoder")


def small(**kw) -> DolphinOptions:
    base = dict(memory=4, encoder_layers=2, context=24, continuation=8, reconstruct=16, reconstruct_steps=2,
                steps=4, batch=2, save_every=2, lr=5e-3)
    return DolphinOptions(**{**base, **kw})


def pattern_windows(count: int, width: int, vocab: int = 97) -> np.ndarray:
    rng = np.random.default_rng(1)
    starts = rng.integers(3, vocab, count)
    return ((starts[:, None] + 7 * np.arange(width)[None]) % (vocab - 3) + 3).astype(np.int64)


def test_splice_puts_exactly_the_given_vectors_at_the_placeholders_of_a_ragged_batch(decoder):
    # acceptance 3: identity projector, the encoder's own embeddings, prompts of different lengths
    pair = Dolphin(decoder, small(projector="linear", readout="memory"))
    with torch.no_grad():
        pair.projector.lens.weight.copy_(torch.eye(32))
        pair.projector.lens.bias.zero_()
    table = pair.encoder.embed_tokens.weight.detach()
    given = table[torch.tensor([[5, 6, 7, 8], [40, 41, 42, 43], [90, 1, 2, 3]])]
    memories = pair.projector(given)
    assert torch.equal(memories, given)
    prompts = [[11, 12], [13, 14, 15, 16, 17, 18], [19]]
    embeds, mask = pair.prompt(memories, prompts)
    width = 4 + 6
    assert embeds.shape == (3, width, 32) and mask.sum(-1).tolist() == [6, 10, 5]
    dec_table = decoder.module.model.get_input_embeddings().weight.detach()
    for row, prompt in enumerate(prompts):
        start = width - 4 - len(prompt)  # left padding before the placeholders
        assert torch.equal(embeds[row, start:start + 4], given[row])
        assert torch.equal(embeds[row, start + 4:], dec_table[torch.tensor(prompt)])
        assert mask[row, :start].sum() == 0
    # an explicit placeholder layout anywhere in the prompt: the i-th placeholder takes memory i
    ids = torch.tensor([[3, PLACEHOLDER, 4, PLACEHOLDER, PLACEHOLDER, 5, PLACEHOLDER],
                        [PLACEHOLDER, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER, 9, 9, 9]])
    spliced = pair.embed_prompt(ids, memories[:2])
    assert torch.equal(spliced[0, [1, 3, 4, 6]], given[0]) and torch.equal(spliced[1, :4], given[1])
    assert torch.equal(spliced[0, [0, 2, 5]], dec_table[torch.tensor([3, 4, 5])])
    with pytest.raises(BadInputError, match="4 placeholder positions per row"):
        pair.embed_prompt(ids[:, 1:], memories[:2])


def test_a_ragged_batch_equals_each_row_alone_in_compress_and_generate(decoder):
    pair = Dolphin(decoder, small(lora=2)).eval()
    contexts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
    prompts = [[20, 21], [22, 23, 24, 25], [26]]
    with torch.no_grad():
        batch = pair.compress(*left_pad(contexts))
        alone = [pair.compress(torch.tensor([c])) for c in contexts]
        for row, one in enumerate(alone):
            torch.testing.assert_close(batch[row], one[0], atol=1e-5, rtol=1e-5)
    together = pair.generate(batch, prompts, max_new_tokens=6)
    for row, one in enumerate(alone):
        assert together[row] == pair.generate(one, [prompts[row]], max_new_tokens=6)[0]


def test_generation_runs_one_cached_step_per_token_and_equals_recomputing(decoder):
    pair = Dolphin(decoder, small()).eval()
    memories = pair.compress(torch.tensor([[5, 6, 7, 8, 9]]))
    lengths = []
    hook = pair.decoder.model.register_forward_pre_hook(
        lambda m, a, kw: lengths.append((kw.get("inputs_embeds") if kw.get("inputs_embeds") is not None
                                         else kw["input_ids"]).shape[1]), with_kwargs=True)
    try:
        cached = pair.generate(memories, [[20, 21, 22]], max_new_tokens=5)[0]
    finally:
        hook.remove()
    assert lengths == [4 + 3] + [1] * 4  # the prompt once, then one position per new token
    ids = [PLACEHOLDER] * 4 + [20, 21, 22]
    with torch.no_grad():
        for _ in range(5):  # greedy, recomputing the whole prompt each step
            embeds = pair.embed_prompt(torch.tensor([ids]), memories)
            ids.append(int(pair.decoder_logits(embeds)[0, -1].argmax()))
    assert cached == ids[7:]


def test_training_checkpoints_and_a_resumed_run_equals_a_straight_one(decoder, tmp_path):
    windows = pattern_windows(16, 32)
    straight = Dolphin(decoder, small(steps=6))
    report = train(straight, windows, str(tmp_path / "a"))
    assert report["steps"] == 8 and set(report["stages"]) == {"restore", "continue"}
    assert report["trained_parameters"] == sum(p.numel() for _, p in straight.trainable())
    trainer_dir = tmp_path / "b"
    killed = Dolphin(decoder, small(steps=6, save_every=4))
    with pytest.raises(KeyboardInterrupt):
        train(killed, windows, str(trainer_dir), progress=lambda d, n, t: _stop_at(n, 5))
    with pytest.raises(UsageError, match="already holds a dolphin checkpoint"):
        train(Dolphin(decoder, small(steps=6)), windows, str(trainer_dir))
    with pytest.raises(UsageError, match="other options: steps"):
        train(Dolphin(decoder, small(steps=7)), windows, str(trainer_dir), resume=True)
    resumed = Dolphin(decoder, small(steps=6, save_every=4))
    again = train(resumed, windows, str(trainer_dir), resume=True)
    assert again["resumed_at"] == 4
    for (name, a), (_, b) in zip(straight.trainable(), resumed.trainable()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def _stop_at(step: int, at: int) -> None:
    if step == at:
        raise KeyboardInterrupt


def test_a_longer_run_lowers_the_loss_and_the_compressed_perplexity(decoder):
    windows = pattern_windows(32, 32)
    pair = Dolphin(decoder, small(steps=60, reconstruct_steps=10, lr=1e-2))
    before = continuation_perplexity(pair, windows[:8], 24)
    report = train(pair, windows)
    after = continuation_perplexity(pair, windows[:8], 24)
    assert report["stages"]["continue"]["loss_last"] < report["stages"]["continue"]["loss_first"]
    assert after["compressed"] < before["compressed"]  # a frozen random decoder: little to gain, but some
    assert before["none"] == after["none"] and before["full"] == after["full"]  # both LMs stay frozen
    assert set(after) >= {"none", "other", "compressed", "full", "gap_closed"}


def test_export_writes_two_bundles_with_parity_and_leaves_the_pair_unchanged(decoder, tmp_path):
    from edgesmith.dolphin.export import export_pair

    pair = Dolphin(decoder, small(lora=2)).eval()
    with torch.no_grad():
        for _, p in pair.trainable():
            p.add_(0.01 * torch.randn_like(p))  # non-zero adapters: the merge has something to fold
    results = export_pair(pair, tmp_path, list(range(5, 25)), [30, 31, 32], "tiny")
    assert [b.path.name for b, _ in results] == ["tiny-encoder.onnx", "tiny-decoder.onnx"]
    assert all(p.passed and p.tier == "verified" for _, p in results)
    assert pair.lora_layers and any(isinstance(m, LoRALinear) for m in pair.encoder.modules())
    from edgesmith import api

    memories = api.run(results[0][0].path, {"input_ids": np.arange(5, 15, dtype=np.int64)[None]})["memories"]
    with torch.no_grad():
        expected = pair.compress(torch.arange(5, 15)[None]).numpy()
    np.testing.assert_allclose(memories, expected, atol=1e-5)


def test_merge_lora_folds_every_adapter_into_its_linear_with_the_same_output(decoder):
    from edgesmith.dolphin.lora import merge_lora

    pair = Dolphin(decoder, small(lora=2)).eval()
    with torch.no_grad():
        for _, p in pair.trainable():
            p.add_(0.01 * torch.randn_like(p))  # non-zero adapters: the merge has something to fold
        before = pair.compress(torch.arange(5, 15)[None])
    assert sum(isinstance(m, LoRALinear) for m in pair.encoder.modules()) == pair.lora_layers == 2 * 7
    merge_lora(pair.encoder)
    assert not any(isinstance(m, LoRALinear) for m in pair.encoder.modules())
    assert all(type(block.self_attn.q_proj) is torch.nn.Linear for block in pair.encoder.layers)
    with torch.no_grad():
        torch.testing.assert_close(pair.compress(torch.arange(5, 15)[None]), before, atol=1e-5, rtol=1e-5)


def test_bad_options_and_inputs_are_refused(decoder):
    with pytest.raises(UsageError, match="K must be at least 1"):
        Dolphin(decoder, small(memory=0))
    with pytest.raises(UsageError, match="unknown projector"):
        Dolphin(decoder, small(projector="conv"))
    with pytest.raises(BadInputError, match="encoder_layers=9, but the encoder has 3 blocks"):
        Dolphin(decoder, small(encoder_layers=9))
    pair = Dolphin(decoder, small())
    with pytest.raises(BadInputError, match=r"93 tokens is longer than the encoder's window of 92 "
                                            r"\(position limit 96 less 4 memory tokens\)"):
        pair.compress(torch.zeros(1, 93, dtype=torch.long))
    with pytest.raises(BadInputError, match="context token id 97 is outside the encoder's vocabulary of 97"):
        pair.compress(torch.tensor([[1, 97]]))
    with pytest.raises(BadInputError, match="not a language model"):
        from dataclasses import replace

        Dolphin(replace(decoder, task="classifier"), small())


def test_different_tokenizers_are_carried_as_text_or_refused(decoder):
    encoder = tiny_lm("tiny-encoder", hidden=24, vocab=120, layers=2, seed=3)
    windows = (pattern_windows(4, 32) % len(ALPHABET)) + 40  # decoder ids of ALPHABET characters
    refused = Dolphin(decoder, small(), encoder=encoder)
    with pytest.raises(BadInputError, match="different vocabularies .120 and 97 tokens. and no tokenizers"):
        encoder_inputs(refused, windows)
    pair = Dolphin(decoder, small(), encoder=encoder, decoder_tokenizer=CharTokenizer(40),
                   encoder_tokenizer=CharTokenizer(70))
    ids, mask = encoder_inputs(pair, windows[:, :24])
    assert torch.equal(ids, torch.from_numpy(windows[:, :24] - 40 + 70)) and bool(mask.all())
    assert pair.projector.lens.in_features == 2 * 24 and pair.compress(ids, mask).shape == (4, 4, 32)
    assert train(pair, windows)["steps"] == 6


def test_a_file_of_another_pair_is_refused_naming_both(decoder, tmp_path):
    pair = Dolphin(decoder, small())
    path = pair.save(tmp_path / "dolphin.pt")
    other = Dolphin(tiny_lm("tiny-other", seed=5), small())
    with pytest.raises(BadInputError, match="trained for another encoder/decoder pair: encoder test:tiny-decoder "
                                            r"\(2 blocks.*this one is encoder test:tiny-other"):
        other.load_trained(path)
    with pytest.raises(BadInputError, match="holds other tensors"):
        Dolphin(decoder, small(memory=8)).load_trained(path)
    fresh = Dolphin(decoder, small(seed=9))
    fresh.load_trained(path)
    assert torch.equal(fresh.memory, pair.memory)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="cannot read Dolphin file"):
        fresh.load_trained(tmp_path / "junk.pt")
    # resuming a checkpoint with another pair names the pair as what changed
    windows = pattern_windows(8, 32)
    train(Dolphin(decoder, small(steps=1, reconstruct_steps=1)), windows, str(tmp_path / "ck"))
    with pytest.raises(UsageError, match="other options: pair"):
        train(Dolphin(tiny_lm("tiny-other", seed=5), small(steps=1, reconstruct_steps=1)), windows,
              str(tmp_path / "ck"), resume=True)


def test_the_lens_maps_context_states_to_their_token_embeddings_and_tail_slots_start_from_it(decoder):
    pair = Dolphin(decoder, small(projector="linear")).eval()
    contexts = torch.from_numpy(pattern_windows(16, 24))
    residual = pair.fit_lens(contexts)
    assert 0 < residual < 0.9
    lens = pair.projector.lens
    assert lens.in_features == 64 and bool((lens.weight[:, :32] == 0).all())  # the memory-token half starts at 0
    with torch.no_grad():
        states = pair.encoder(input_ids=contexts[:2], use_cache=False).last_hidden_state
        slots = pair.compress(contexts[:2])
    torch.testing.assert_close(slots, torch.nn.functional.linear(states[:, -4:], lens.weight[:, 32:], lens.bias),
                               atol=1e-5, rtol=1e-5)  # slot i = lens(state of the i-th of the last K tokens)
    short = pair.compress(torch.tensor([[5, 6]]))  # fewer context tokens than slots: the first slots read nothing
    with torch.no_grad():
        torch.testing.assert_close(short[0, :2], lens.bias.expand(2, -1), atol=1e-6, rtol=1e-6)


def test_ask_answers_text_through_the_tokenizers(decoder):
    pair = Dolphin(decoder, small(), decoder_tokenizer=CharTokenizer(40)).eval()
    answer = pair.ask("the devil is in the details.", "what is", max_new_tokens=5)
    assert isinstance(answer, str) and len(answer) <= 5
    with pytest.raises(UsageError, match="unknown readout"):
        Dolphin(decoder, small(readout="mean"))


def test_the_api_asks_and_scores_a_pair_it_is_given_and_refuses_an_unknown_option(decoder, tmp_path):
    from edgesmith import api

    pair = Dolphin(decoder, small(), decoder_tokenizer=CharTokenizer(40)).eval()
    answer = api.dolphin_ask(pair, "the devil is in the details.", "what is", max_new_tokens=3)
    assert answer["mode"] == "compressed" and answer["new_tokens"] <= 3 and answer["seconds"] >= 0
    seen = []
    figures = api.dolphin_eval(pair, windows=2, progress=lambda n, total: seen.append((n, total)))
    assert figures["windows"] == 2 and figures["tokens"] == 16
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)  # the total is known before the first window is scored
    with pytest.raises(UsageError, match="unknown option 'memroy'"):
        api.dolphin_train("zoo:smollm2-135m", tmp_path / "out", memroy=4)
    assert not (tmp_path / "out").exists()


def _fast_char_tokenizer():
    """CharTokenizer's ids (40 + alphabet index, ``</s>`` = 2: the tiny decoder's EOS) as a transformers fast
    tokenizer, so a bundle can carry it (``tokenizer.json``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 2, **{c: 40 + i for i, c in enumerate(ALPHABET)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


def test_the_decoder_bundle_generates_what_ask_answers_from_the_encoder_bundles_memories(decoder, tmp_path, capsys):
    from edgesmith import api
    from edgesmith.cli import main
    from edgesmith.dolphin.export import export_pair

    pair = Dolphin(decoder, small(), decoder_tokenizer=_fast_char_tokenizer()).eval()
    context, question = "the devil is in the details, they say.", "what is"
    (enc, _), (dec, parity) = export_pair(pair, tmp_path, list(range(45, 65)), [50, 51, 52], "ask")
    assert parity.passed and parity.generation["passed"] and parity.generation["memories"] == 4
    record = dec.manifest.generation
    assert record["memories"]["encoder_bundle"] == enc.path.name == "ask-encoder.onnx"
    assert record["memories"]["context_tokenizer"] == record["tokenizer"] == "tokenizer/tokenizer.json"
    answer = api.dolphin_ask(pair, context, question, max_new_tokens=6)
    got = api.generate(dec.path, question, context=context, max_new_tokens=6)  # the encoder found by name
    assert got.text == answer["answer"] and len(got.tokens) == answer["new_tokens"]
    ids = pair.decoder_tokenizer(question)["input_ids"]
    with torch.no_grad():
        memories = pair.compress(torch.tensor([pair.encoder_tokenizer(context)["input_ids"]]))
    assert got.tokens == pair.generate(memories, [ids], 6)[0]
    assert got.prompt_tokens == ids
    plain = api.generate(dec.path, question, context=context, max_new_tokens=6, binding=False)  # numpy feeds
    assert plain.tokens == got.tokens
    (tmp_path / "doc.txt").write_text(context)
    capsys.readouterr()
    assert main(["generate", str(dec.path), "--context", str(tmp_path / "doc.txt"), "-p", question, "-n", "6",
                 "--encoder", str(enc.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == got.tokens
    with pytest.raises(BadInputError, match="is a Dolphin decoder: it needs the memories of a context"):
        api.generate(dec.path, question)
    with pytest.raises(BadInputError, match="no encoder bundle for ask-decoder.onnx"):
        api.generate(dec.path, question, context=context, encoder=tmp_path / "missing")
