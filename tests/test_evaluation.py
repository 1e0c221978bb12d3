"""`jet-jax eval` and jet_jax.evaluation against transformers on tiny random models
(byte-level tokenizer: ids are UTF-8 bytes), bad task files, out-of-vocabulary ids."""

import json

import numpy as np
import pytest
import torch

from jet_jax.cli import main
from jet_jax.convert import from_hf
from jet_jax.evaluation import (MCExample, mqar_examples, multiple_choice, passkey_examples,
                                perplexity, read_mc_jsonl, retrieval_accuracy, sliding_windows)
from jet_jax.token_ids import TokenIdError
from tests.hf_fixtures import tiny_llama, tiny_qwen3

TASK = [
    {"context": "The cat sat on the", "choices": ["mat", "moon and the stars", "x"], "label": 0},
    {"context": "Water is ", "choices": ["wet", "dry as a bone"], "label": 1},
    {"context": "One, two,", "choices": ["three", "four", "five", "sixty-six"], "label": 2},
    {"context": "Héllo wörld:", "choices": ["ünïcode", "ascii"], "label": 0},
    {"context": "a b c", "choices": ["d e f", "d", "zzzzzzzzzz"], "label": 2},
]
encode = lambda s: list(s.encode("utf-8"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf = tiny_llama(path, vocab=300, hidden=32, heads=4, kv=2, init_std=0.2, seed=7)
    return path, hf, from_hf(path)


def _hf_logprobs(hf, ids):
    """log p(ids[j] | ids[:j]) for j >= 1, by transformers."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def test_multiple_choice_equals_direct_transformers_computation(llama, tmp_path):
    path, hf, model = llama
    lls, acc, acc_norm = [], 0, 0
    for ex in TASK:
        ctx = encode(ex["context"].rstrip())
        ll = []
        for c in ex["choices"]:
            cont = encode(ex["context"][len(ex["context"].rstrip()):] + " " + c)
            ll.append(_hf_logprobs(hf, ctx + cont)[-len(cont):].sum())
        ll = np.array(ll)
        lls.append(ll)
        acc += np.argmax(ll) == ex["label"]
        acc_norm += np.argmax(ll / [len(c.encode()) for c in ex["choices"]]) == ex["label"]
    examples = [MCExample(ex["context"], tuple(ex["choices"]), ex["label"]) for ex in TASK]
    ours = multiple_choice(model, examples, encode, batch_size=3, return_loglikelihoods=True)
    for a, b in zip(ours["loglikelihoods"], lls):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    assert ours["acc"] == acc / len(TASK) and ours["acc_norm"] == acc_norm / len(TASK)
    assert ours["acc"] != ours["acc_norm"]  # the task file is chosen so the two differ

    # The CLI gives the same numbers.
    task = tmp_path / "task.jsonl"
    task.write_text("\n".join(json.dumps(ex) for ex in TASK) + "\n")
    assert main(["eval", "--model", str(path), "--mc", str(task), "--json", str(tmp_path / "r.json"),
                 "--no-progress"]) == 0
    got = json.loads((tmp_path / "r.json").read_text())["results"]["model"]["mc:task.jsonl"]
    assert got["acc"] == ours["acc"] and got["acc_norm"] == ours["acc_norm"] and got["n"] == len(TASK)


def test_perplexity_equals_transformers_with_sliding_window(llama, tmp_path):
    path, hf, model = llama
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 300, size=n).tolist() for n in (70, 9, 33)]
    ctx, stride = 24, 10
    nll, count = 0.0, 0
    for doc in docs:  # transformers' perplexity-guide loop, written out independently
        prev_end = 0
        for begin in range(0, len(doc), stride):
            end = min(begin + ctx, len(doc))
            lp = _hf_logprobs(hf, doc[begin:end])  # lp[j] scores doc[begin + j + 1]
            first = max(prev_end, begin + 1)
            nll -= lp[first - begin - 1:].sum()
            count += end - first
            prev_end = end
            if end == len(doc):
                break
    ours = perplexity(model, docs, context_len=ctx, stride=stride, batch_size=4)
    assert ours["tokens"] == count == sum(len(d) - 1 for d in docs)
    np.testing.assert_allclose(ours["ppl"], np.exp(nll / count), rtol=1e-5)
    # A window as long as the document is the plain full-context perplexity.
    full = perplexity(model, docs[:1], context_len=100)
    np.testing.assert_allclose(full["nll"], -_hf_logprobs(hf, docs[0]).mean(), rtol=1e-5)


def test_sliding_windows_score_each_token_once():
    for n, c, s in [(1, 4, 4), (2, 4, 4), (50, 8, 3), (50, 8, 8), (9, 8, 1)]:
        scored = [j for b, e, f in sliding_windows(n, c, s) for j in range(f, e)]
        assert scored == list(range(1, n)), (n, c, s)
        assert all(e - b <= c and b < f for b, e, f in sliding_windows(n, c, s))


def test_text_jsonl_parquet_and_bits_per_byte_via_cli(llama, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, hf, model = llama
    texts = ["Some text for the model to read.", "Another document, a bit longer than the first."]
    (tmp_path / "a.txt").write_text(texts[0])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    argv = ["eval", "--model", str(path), "--text", str(tmp_path / "b.jsonl"), "--text",
            str(tmp_path / "c.parquet"), "--text-key", "body", "--context-len", "16",
            "--json", str(tmp_path / "r.json"), "--no-progress"]
    assert main(argv) == 0
    r = json.loads((tmp_path / "r.json").read_text())["results"]["model"]
    direct = perplexity(model, [encode(t) for t in texts], context_len=16,
                        num_bytes=sum(len(t.encode()) for t in texts))
    for key in ("ppl:b.jsonl", "ppl:c.parquet"):
        np.testing.assert_allclose(r[key]["ppl"], direct["ppl"], rtol=1e-6)
        np.testing.assert_allclose(r[key]["bits_per_byte"], direct["bits_per_byte"], rtol=1e-6)
    # bits per byte = total nats / ln 2 / bytes
    np.testing.assert_allclose(direct["bits_per_byte"],
                               direct["nll"] * direct["tokens"] / np.log(2) / sum(map(len, map(encode, texts))))


def test_eval_kernel_flag_scores_the_same(llama, tmp_path, kernel_calls):
    """`jet-jax eval --attention-implementation chunked` loads the model with that kernel
    and scores the same perplexity as the dense reference (1e-5: float rounding only)."""
    path, hf, model = llama
    text = "A text long enough to span several windows of sixteen tokens, twice or more."
    (tmp_path / "a.txt").write_text(text)
    ppl = {}
    for att in ("xla", "chunked"):
        out = tmp_path / f"{att}.json"
        assert main(["eval", "--model", str(path), "--text", str(tmp_path / "a.txt"),
                     "--context-len", "16", "--json", str(out), "--no-progress",
                     "--attention-implementation", att]) == 0
        ppl[att] = json.loads(out.read_text())["results"]["model"]["ppl:a.txt"]["ppl"]
        assert set(kernel_calls["attention"]) == {att}  # the flag reached every layer
        kernel_calls["attention"].clear()
    direct = perplexity(model, [encode(text)], context_len=16, num_bytes=len(text.encode()))
    np.testing.assert_allclose(ppl["xla"], direct["ppl"], rtol=1e-6)
    np.testing.assert_allclose(ppl["chunked"], direct["ppl"], rtol=1e-5)


@pytest.mark.parametrize("lines, message", [
    (['{"context": "a", "choices": ["b", "c"], "label": 0}', '{"context": "a", "label": 0}'],
     r"task.jsonl:2: missing key\(s\) \['choices'\]"),
    (['{"context": "a", "choices": ["b", "c"], "label": 2}'], r"task.jsonl:1: label 2 is out of range for 2"),
    (['', '{"context": "a", "choices": ["b"], "label": 0}'], r"task.jsonl:2: 'choices' must be a list"),
    (['{"context": "a", "choices": ["b", "c"], "label": 1}', "{oops"], r"task.jsonl:2: not valid JSON"),
    ([], r"task.jsonl: no examples \(the file is empty\)"),
])
def test_bad_task_files_name_the_line(tmp_path, capsys, lines, message, llama):
    task = tmp_path / "task.jsonl"
    task.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=message):
        read_mc_jsonl(task)
    assert main(["eval", "--model", str(llama[0]), "--mc", str(task), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jet-jax eval: error:") and len(err.strip().splitlines()) == 1


def test_retrieval_tasks_and_side_by_side_table(tmp_path, capsys, llama):
    from jet_jax.checkpoint_io import save_orbax

    path, hf, model = llama
    tiny_qwen3(tmp_path / "q3", vocab=300)
    save_orbax(from_hf(tmp_path / "q3"), tmp_path / "orbax")  # the teacher as an Orbax checkpoint
    reqs = mqar_examples(300, context_len=64, num_pairs=4, num_examples=3, seed=1)
    for r in reqs:
        assert len(r.ids) == 64 and r.score.sum() == 4
        for j in np.flatnonzero(r.score):  # every scored value follows its key, as in the pairs
            k = np.flatnonzero(r.ids[:8:2] == r.ids[j - 1])
            assert len(k) == 1 and r.ids[2 * k[0] + 1] == r.ids[j]
    keys = passkey_examples(encode, context_len=200, num_examples=3, seed=0)
    for r in keys:
        assert 150 < len(r.ids) <= 200
        answer = bytes(r.ids[r.score].tolist()).decode()
        assert answer.strip().isdigit() and f"pass key is{answer}." in bytes(r.ids.tolist()).decode()
    acc = retrieval_accuracy(model, keys, per="request")
    assert acc["n"] == 3 and 0.0 <= acc["acc"] <= 1.0
    assert main(["eval", "--model", str(path), "--teacher", str(tmp_path / "orbax"), "--mqar",
                 "--mqar-pairs", "4", "--passkey", "--context-len", "96", "--num-examples", "2",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["task", "metric", "model", "teacher"]
    assert [l.split()[:2] for l in out[2:4]] == [["mqar@96", "acc"], ["passkey@96", "acc"]]
    r = json.loads((tmp_path / "r.json").read_text())["results"]
    assert set(r) == {"model", "teacher"} and r["teacher"]["mqar@96"]["n"] == 2 * 4


def test_out_of_vocabulary_ids_are_refused_everywhere(tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from jet_jax.generation import generate, generate_stream

    tiny_llama(tmp_path / "m", vocab=150)
    model = from_hf(tmp_path / "m")
    with pytest.raises(TokenIdError, match=r"id 150 at index \[1, 2\] is outside the model's vocabulary \[0, 150\)"):
        generate(model, [[1, 2], [3, 4, 150]], max_new_tokens=2)
    with pytest.raises(TokenIdError, match="id -1"):
        next(generate_stream(model, [[-1]], max_new_tokens=2))
    with pytest.raises(TokenIdError, match="id 200"):
        perplexity(model, [[1, 200, 3]], context_len=8)
    # Text whose byte ids exceed the vocabulary: refused by eval before scoring.
    (tmp_path / "t.txt").write_text("plain ascii then é")  # é = bytes 195 169
    assert main(["eval", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt")]) == 2
    assert "id 195 at index [17] is outside the model's vocabulary [0, 150)" in capsys.readouterr().err
    # A tokenizer.json larger than the model: the generate command refuses the prompt.
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(400)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "m" / "tokenizer.json"))
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "w3 w300",
                 "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert "id 300" in err and err.count("\n") == 1 and "Traceback" not in err
