"""Beam search against brute force: every triple of small codebooks is scored by an
independent teacher-forced forward pass (OneRecV2.__call__), which gives the exhaustive
ranking and the per-step log-probabilities a plainly written beam search walks."""

import argparse
import functools
import itertools
import json
import re

import chex
import jax
import numpy as np
import pytest
from jax import monitoring

from onerec_jax import checkpoint
from onerec_jax import generate as gen
from onerec_jax.cli import generate as cli
from onerec_jax.config import preset
from onerec_jax.model import OneRecV2, init_params

CODEBOOKS = (4, 5, 6)
TRIPLES = np.array(list(itertools.product(*map(range, CODEBOOKS))), np.int32)  # [120, 3]
ROW = {tuple(t): i for i, t in enumerate(TRIPLES.tolist())}

_compiles = []
monitoring.register_event_duration_secs_listener(
    lambda name, *_, **__: _compiles.append(name)
    if name == "/jax/core/compile/backend_compile_duration" else None)


def _config(name):
  return preset(name).replace(codebook_sizes=CODEBOOKS, param_dtype="float32")


_init = jax.jit(init_params, static_argnums=0)  # one compile instead of one per op


@pytest.fixture(scope="module")
def tiny():
  cfg = _config("tiny")
  return cfg, _init(cfg, jax.random.key(0))


def _requests(cfg, batch, seed=0):
  """Contexts one token shorter than max_len with some tokens masked (exercises padding)."""
  rng = np.random.default_rng(seed)
  feats, mask = {}, {}
  for p in cfg.pathways:
    feats[p.name] = rng.standard_normal((batch, p.max_len - 1, p.width), np.float32)
    mask[p.name] = rng.random((batch, p.max_len - 1)) > 0.2
    mask[p.name][:, 0] = True
  return feats, mask


@functools.cache
def _forward(cfg):
  return jax.jit(lambda p, f, m, ids: OneRecV2(cfg).apply({"params": p}, f, ids, m))


def _logp(cfg, params, feats, mask, i):
  """Request i's teacher-forced log-probabilities for every triple, one [120, V_j] per
  level (level j's row depends only on the triple's first j codes)."""
  rep = lambda d: {k: np.repeat(v[i:i + 1], len(TRIPLES), axis=0) for k, v in d.items()}
  logits = _forward(cfg)(params, rep(feats), rep(mask), TRIPLES)
  return [np.asarray(jax.nn.log_softmax(l, axis=-1), np.float64) for l in logits]


def _ranking(logp, triples):
  """Exhaustive ranking of `triples` [n, 3]: (triples sorted best first, their scores)."""
  rows = [ROW[tuple(t)] for t in triples.tolist()]
  scores = sum(logp[j][rows, triples[:, j]] for j in range(3))
  order = np.argsort(-scores, kind="stable")
  return triples[order], scores[order]


def _beam_reference(logp, width, valid=None):
  """Plain beam search: beams are (score, prefix) pairs, expanded and sorted each level."""
  beams = [(0.0, ())]
  for j, size in enumerate(CODEBOOKS):
    cands = []
    for score, prefix in beams:
      row = ROW[prefix + (0,) * (3 - len(prefix))]
      for c in range(size):
        if valid is None or any(tuple(t[:j + 1]) == prefix + (c,) for t in valid):
          cands.append((score + logp[j][row, c], prefix + (c,)))
    beams = sorted(cands, key=lambda sc: -sc[0])[:width]  # stable: ties keep input order
  return np.array([p for _, p in beams]), np.array([s for s, _ in beams])


def _check(res, i, triples, scores):
  np.testing.assert_array_equal(res.semantic_ids[i], triples)
  np.testing.assert_allclose(res.scores[i], scores, rtol=1e-5, atol=1e-5)


def test_full_width_is_the_exhaustive_ranking(tiny):
  cfg, params = tiny
  feats, mask = _requests(cfg, 3)
  res = gen.generate(params, cfg, feats, mask=mask, beam_width=len(TRIPLES),
                     batch_buckets=(4,))
  chex.assert_shape(res.semantic_ids, (3, 120, 3))
  assert res.item_ids is None
  for i in range(3):
    _check(res, i, *_ranking(_logp(cfg, params, feats, mask, i), TRIPLES))


def test_small_width_matches_plain_beam_search():
  cfg = _config("tiny-moe")  # MoE layers, separate V, two KV sets
  params = _init(cfg, jax.random.key(1))
  feats, mask = _requests(cfg, 2, seed=1)
  res = gen.generate(params, cfg, feats, mask=mask, beam_width=7, batch_buckets=(2,))
  for i in range(2):  # W = 7 > 4 codes at step 1: empty slots there, none at the end
    _check(res, i, *_beam_reference(_logp(cfg, params, feats, mask, i), 7))


def _table(cfg, count, seed):
  ids, sem = gen.random_items(cfg, count, seed)
  return ids + 1000, sem, gen.build_item_table(ids + 1000, sem, cfg.codebook_sizes)


def test_constrained_full_width_is_the_ranking_of_valid_items(tiny):
  cfg, params = tiny
  ids, sem, table = _table(cfg, 17, seed=2)
  feats, mask = _requests(cfg, 3, seed=2)
  res = gen.generate(params, cfg, feats, mask=mask, beam_width=17, valid_items=table,
                     batch_buckets=(4,))
  item_of = {tuple(t): k for t, k in zip(sem.tolist(), ids.tolist())}
  for i in range(3):
    _check(res, i, *_ranking(_logp(cfg, params, feats, mask, i), sem))
    assert res.item_ids[i].tolist() == [item_of[tuple(t)] for t in res.semantic_ids[i].tolist()]


def test_constrained_small_width_after_warmup_needs_no_compile(tiny):
  cfg, params = tiny
  ids, sem, table = _table(cfg, 30, seed=3)
  feats, mask = _requests(cfg, 2, seed=3)
  seconds = gen.warmup(params, cfg, beam_width=6, valid_items=table, batch_buckets=(2,))
  assert set(seconds) == {2}
  before = len(_compiles)
  res = gen.generate(params, cfg, feats, mask=mask, beam_width=6, valid_items=table,
                     batch_buckets=(2,))
  assert len(_compiles) == before
  item_of = {tuple(t): k for t, k in zip(sem.tolist(), ids.tolist())}
  for i in range(2):
    _check(res, i, *_beam_reference(_logp(cfg, params, feats, mask, i), 6, valid=sem))
    assert res.item_ids[i].tolist() == [item_of[tuple(t)] for t in res.semantic_ids[i].tolist()]


def test_padding_keeps_results_and_a_bucket_compiles_once(tiny):
  cfg, params = tiny
  feats, mask = _requests(cfg, 6, seed=4)
  run = lambda n: gen.generate(params, cfg, {k: v[:n] for k, v in feats.items()},
                               mask={k: v[:n] for k, v in mask.items()}, beam_width=120,
                               batch_buckets=(4,))
  three = run(3)  # one padding row
  before = len(_compiles)
  four, six = run(4), run(6)  # no padding; then chunks of 4 and 2 (padded to 4)
  assert len(_compiles) == before
  for other in (four, six):
    np.testing.assert_array_equal(other.semantic_ids[:3], three.semantic_ids)
    np.testing.assert_allclose(other.scores[:3], three.scores, rtol=1e-6)
  np.testing.assert_array_equal(six.semantic_ids[:4], four.semantic_ids)
  chex.assert_shape(six.scores, (6, 120))


def test_chunks():
  assert gen.chunks(3, (1, 2, 4)) == [(0, 3, 4)]
  assert gen.chunks(9, (1, 2, 4)) == [(0, 4, 4), (4, 8, 4), (8, 9, 1)]
  assert gen.chunks(8, (4,)) == [(0, 4, 4), (4, 8, 4)]


def _kv_like_tensors(text, n, d_head):
  """Element counts of the tensors in StableHLO text with both a context (n) and a head
  (d_head) axis: the context K/V and anything made from them."""
  counts = []
  for dims in re.findall(r"tensor<((?:\d+x)+)[a-z]", text):
    shape = [int(d) for d in dims.rstrip("x").split("x")]
    if n in shape and d_head in shape:
      counts.append(int(np.prod(shape)))
  return counts


def test_context_kv_is_not_replicated_per_beam(tiny):
  cfg, params = tiny
  f, m = gen.pad_batch(cfg, *_requests(cfg, 2), 0, 2, 2)
  n = cfg.max_context_len
  kv = 2 * n * cfg.kv_heads * cfg.d_head  # one request batch's K (= V)
  for width in (7, 11):
    text = gen.lower(params, f, m, None, config=cfg, beam_width=width).as_text()
    counts = _kv_like_tensors(text, n, cfg.d_head)
    assert counts and max(counts) == kv, (width, sorted(set(counts)))


def _error_cases(cfg, table):
  good, mask = _requests(cfg, 2)
  with_ = lambda **kw: {**good, **kw}
  return {
      "missing pathway": (dict(features={"static": good["static"]}), "missing pathways"),
      "wrong width": (dict(features=with_(static=np.zeros((2, 3, 7)))), r"expected \[B, n, 16\]"),
      "too long": (dict(features=with_(long_term=np.zeros((2, 13, 24)))), "more than the"),
      "batch mismatch": (dict(features=with_(static=np.zeros((3, 3, 16)))), "disagree"),
      "empty batch": (dict(features={k: v[:0] for k, v in good.items()}), "empty batch"),
      "bad mask": (dict(mask={"static": np.ones((2, 2), bool)}), r"mask\['static'\]"),
      "no tokens": (dict(mask={k: np.zeros(v.shape, bool) for k, v in mask.items()}),
                    "no context tokens"),
      "beam too wide": (dict(beam_width=121), "exceeds the 120"),
      "beam wider than items": (dict(beam_width=11, valid_items=table), "exceeds the 10 valid"),
      "beam not positive": (dict(beam_width=0), "positive integer"),
      "table for other codebooks": (dict(valid_items=gen.build_item_table(
          [0], [[0, 0, 0]], (8, 8, 8))), "built for codebooks"),
  }


@pytest.mark.parametrize("case", ["missing pathway", "wrong width", "too long",
                                  "batch mismatch", "empty batch", "bad mask", "no tokens",
                                  "beam too wide", "beam wider than items",
                                  "beam not positive", "table for other codebooks"])
def test_input_errors_before_device_work(tiny, case):
  cfg, params = tiny
  table = gen.build_item_table(*gen.random_items(cfg, 10), cfg.codebook_sizes)
  args = dict(features=_requests(cfg, 2)[0], beam_width=4)
  change, message = _error_cases(cfg, table)[case]
  before = len(_compiles)
  with pytest.raises(gen.GenerateInputError, match=message):
    gen.generate(params, cfg, **{**args, **change})
  assert len(_compiles) == before


@pytest.mark.parametrize("ids, sem, message", [
    ([0, 1], [[0, 0, 0], [0, 5, 0]], "level-1 codes outside"),
    ([0, 1], [[0, 0, 0], [0, 0, -1]], "level-2 codes outside"),
    ([0, 1], [[0, 0, 0], [0, 0, 0]], "each item needs its own"),
    ([5, 3, 3], [[0, 0, 0], [0, 0, 1], [0, 1, 0]],
     r"item id 3 is repeated \(rows \[1, 2\]\); 1 ids repeat in all"),
    ([-1], [[0, 0, 0]], "item ids outside"),
    ([0], [[0, 0]], r"expected \[N, 3\]"),
    ([], np.zeros((0, 3), int), "empty"),
])
def test_item_table_errors(ids, sem, message):
  with pytest.raises(gen.GenerateInputError, match=message):
    gen.build_item_table(np.asarray(ids, int), np.asarray(sem), CODEBOOKS)


def test_item_table_structure():
  sem = np.array([[1, 2, 3], [0, 4, 1], [1, 2, 0], [1, 0, 5], [0, 4, 2]])
  table = gen.build_item_table(np.arange(5), sem, CODEBOOKS)
  assert [a.tolist() for a in table.offsets] == [[0, 2], [0, 1, 3], [0, 2, 3, 5]]
  assert [a.tolist() for a in table.codes] == [[0, 1], [4, 0, 2], [1, 2, 5, 0, 3]]
  np.testing.assert_array_equal(table.item_ids, [1, 4, 3, 2, 0])
  assert table.max_children == (2, 2, 2) and table.num_items == 5


def _cli(*argv):
  from onerec_jax.cli import main
  return main(["generate", *argv])


def test_cli_contexts_file_constrained_fp8(tmp_path, capsys):
  cfg = preset("tiny")
  feats, mask = _requests(cfg, 3)
  gen.save_contexts(tmp_path / "ctx.npz", feats, mask, request_ids=[7, 8, 9])
  out = tmp_path / "deeper" / "out.json"  # its folder is created
  assert _cli("--preset", "tiny", "--contexts", str(tmp_path / "ctx.npz"), "--batch-size",
              "2", "--beam-width", "4", "--random-items", "50", "--fp8", "--output",
              str(out)) == 0
  report = json.loads(out.read_text())
  assert report["fp8"] and report["valid_items"] == 50
  assert [r["request_id"] for r in report["results"]] == [7, 8, 9]
  for r in report["results"]:
    scores = [it["log_prob"] for it in r["items"]]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert [it["rank"] for it in r["items"]] == [1, 2, 3, 4]
    assert all("item_id" in it for it in r["items"])
  timing = report["timing"]
  assert timing["batches"] == 2 and timing["compile_s"] > 0
  assert "latency_ms_median" in timing  # more than one batch was timed
  captured = capsys.readouterr()
  assert "requests/s" in captured.err and "median batch latency" in captured.err
  header, *rows = captured.out.splitlines()
  assert header.split() == ["request_id", "rank", "item_id", "semantic_ids", "log_prob"]
  assert len(rows) == 3 * 4 and rows[0].split()[:2] == ["7", "1"]


def test_cli_one_batch_sized_to_the_requests(capsys):
  """Fewer requests than --batch-size run as one batch of their own size, and one timed
  batch reports its time, not a median."""
  assert _cli("--preset", "tiny", "--random", "3", "--beam-width", "4",
              "--batch-size", "32") == 0
  err = capsys.readouterr().err
  assert "batch 3," in err and "one batch in" in err and "median" not in err


def test_cli_reports_bad_contexts(tmp_path, capsys):
  np.savez(tmp_path / "ctx.npz", static=np.zeros((2, 3, 5), np.float32))
  assert _cli("--preset", "tiny", "--contexts", str(tmp_path / "ctx.npz")) == 2
  err = capsys.readouterr().err
  assert "features: missing pathways" in err and len(err.strip().splitlines()) == 1


def test_cli_demo_defaults_to_its_sample_users_and_valid_items(tmp_path, capsys):
  """The README's main command: the shipped demo recommends real items for all its sample
  test users, labeled."""
  out = tmp_path / "out.json"
  assert _cli("--beam-width", "8", "--output", str(out)) == 0
  report = json.loads(out.read_text())
  with np.load(checkpoint.DEMO_SOURCE / "valid_items.npz") as items:
    valid = set(items["item_ids"].tolist())
  with np.load(checkpoint.DEMO_SOURCE / "contexts.npz") as ctx:
    requests = ctx["request_ids"].tolist()
  assert report["valid_items"] == len(valid)
  assert [r["request_id"] for r in report["results"]] == requests
  for r in report["results"]:
    assert len(r["items"]) == 8 and all(it["item_id"] in valid for it in r["items"])
  assert report["timing"]["batch_size"] == len(requests)  # 16 users: one batch of 16
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 1 + 5 * len(requests)  # the header, then 5 items of every user
  assert {int(line.split()[0]) for line in printed[1:]} == set(requests)


@pytest.mark.parametrize("name", ["tiny", "qwen3-tiny"])
def test_random_contexts_are_drawn_per_request(name):
  cfg = preset(name)
  whole = gen.random_contexts(cfg, 6, seed=4)
  for p in cfg.pathways:  # full length; normal features, or token ids in the vocabulary
    x = whole[p.name]
    if p.width:
      chex.assert_shape(x, (6, p.max_len, p.width))
      assert x.dtype == np.float32 and abs(x.mean()) < 0.2 and 0.8 < x.std() < 1.2
    else:
      chex.assert_shape(x, (6, p.max_len))
      assert x.dtype == np.int32 and 0 <= x.min() and x.max() < cfg.vocab_size
  part = gen.random_contexts(cfg, 3, seed=4, start=2)  # requests 2, 3, 4 on their own
  chex.assert_trees_all_equal(part, {k: v[2:5] for k, v in whole.items()})
  other = gen.random_contexts(cfg, 6, seed=5)
  assert not any(np.array_equal(whole[k][i], other[k][i]) for k in whole for i in range(6))
  assert not np.array_equal(whole[cfg.pathways[0].name][0], whole[cfg.pathways[0].name][1])
  empty = gen.random_contexts(cfg, 0)
  assert all(v.shape[0] == 0 for v in empty.values())
  p = cfg.pathways[0]  # request 0's stream is not the seed's own (random_items draws that)
  plain = np.random.default_rng(4)
  own = (plain.integers(0, cfg.vocab_size, p.max_len, dtype=np.int32) if p.width == 0
         else plain.standard_normal((p.max_len, p.width), np.float32))
  assert not np.array_equal(whole[p.name][0], own)


def test_cli_random_contexts_batch_by_batch(tmp_path):
  """--random requests drawn batch by batch are the ones random_contexts draws at once."""
  cfg = preset("tiny")
  out = tmp_path / "r.json"
  assert _cli("--preset", "tiny", "--random", "5", "--batch-size", "2", "--seed", "2",
              "--beam-width", "4", "--no-compile-cache", "--output", str(out)) == 0
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(2))
  res = gen.generate(params, cfg, gen.random_contexts(cfg, 5, seed=2), beam_width=4,
                     batch_buckets=(2,))
  results = json.loads(out.read_text())["results"]
  assert [r["request_id"] for r in results] == list(range(5))
  for i, r in enumerate(results):
    assert [it["semantic_ids"] for it in r["items"]] == res.semantic_ids[i].tolist()
    assert [it["log_prob"] for it in r["items"]] == [float(x) for x in res.scores[i]]
