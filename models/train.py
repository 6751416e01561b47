#!/usr/bin/env python3
"""Train lookat's small GPT-2 fixture (Hugging Face GPT2LMHeadModel, GPT-2 vocabulary) on package text.

Data: models/work/data/{train,val}_{prose,code,technical}.bin from build_corpus.py. Every training
sequence is a random window from one domain, the domain drawn uniformly, so code (the largest source) does
not crowd out prose. The random stream of step k is seeded with (seed, k), so a resumed run draws the same
batches as an uninterrupted one.

Resumable: the model, optimizer, step, tokens seen and wall time are checkpointed to --out every
--ckpt-minutes; running the same command again resumes. --stop-at (UTC HH:MM) or --max-minutes end it
early with a final checkpoint and a final validation. The log is JSON lines in <out>/train_log.jsonl.

    nice -n 19 models/.venv/bin/python models/train.py --out models/work/train
"""
import argparse
import datetime as dt
import json
import math
import os
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAINS = ("prose", "code", "technical")
VOCAB = 50257


def load(split):
    return {d: np.fromfile(os.path.join(HERE, "work", "data", f"{split}_{d}.bin"), dtype=np.uint16) for d in DOMAINS}


def batch(data, rng, bsz, seq):
    xs = []
    for _ in range(bsz):
        d = DOMAINS[rng.integers(len(DOMAINS))]
        arr = data[d]
        i = rng.integers(0, arr.size - seq - 1)
        xs.append(arr[i : i + seq + 1].astype(np.int64))
    x = torch.from_numpy(np.stack(xs))
    return x[:, :-1], x[:, 1:]


def val_windows(data, seq, per_domain):
    """Fixed, non-overlapping validation windows, evenly spaced through each domain's val tokens."""
    out = {}
    for d in DOMAINS:
        arr = data[d]
        n = min(per_domain, (arr.size - 1) // seq)
        starts = np.linspace(0, arr.size - seq - 1, n).astype(np.int64)
        out[d] = torch.from_numpy(np.stack([arr[s : s + seq + 1].astype(np.int64) for s in starts]))
    return out


@torch.no_grad()
def evaluate(model, windows):
    model.eval()
    res = {}
    tot, cnt = 0.0, 0
    for d, w in windows.items():
        s, c = 0.0, 0
        for i in range(0, w.shape[0], 2):
            x = w[i : i + 2]
            logits = model(input_ids=x[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="sum")
            s += loss.item()
            c += x[:, 1:].numel()
        res[d] = s / c
        tot += s
        cnt += c
    res["all"] = tot / cnt
    model.train()
    return res


def unigram_baseline(train, windows):
    """Cross-entropy (nats/token) of an add-one-smoothed unigram model fit on the training tokens,
    on exactly the tokens the model's validation loss is measured on (the predicted targets)."""
    counts = np.ones(VOCAB, dtype=np.float64)
    for d in DOMAINS:
        counts += np.bincount(train[d], minlength=VOCAB)[:VOCAB]
    logp = np.log(counts / counts.sum())
    res, tot, cnt = {}, 0.0, 0
    for d, w in windows.items():
        t = w[:, 1:].numpy().reshape(-1)
        res[d] = float(-logp[t].mean())
        tot += -logp[t].sum()
        cnt += t.size
    res["all"] = float(tot / cnt)
    return res


def make_model(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=args.n_positions, n_embd=args.n_embd, n_layer=args.n_layer,
                     n_head=args.n_head, bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True)
    torch.manual_seed(args.seed)
    return GPT2LMHeadModel(cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "work", "train"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-positions", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--steps", type=int, default=2000, help="length of the cosine schedule (step-based)")
    ap.add_argument("--time-budget-min", type=float, default=None,
                    help="wall-time schedule: the cosine runs over this many minutes of training wall time and "
                         "training stops there (the CPU is shared, so a step count cannot be planned)")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--val-windows", type=int, default=12, help="per domain")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--stop-at", default=None, help="UTC HH:MM: checkpoint, validate and stop")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2, help="at most this many threads")
    ap.add_argument("--adapt-threads", type=int, default=25,
                    help="every N steps, time a few steps at 1 and at --threads threads and keep the faster: "
                         "under nice 19 on a shared 2-core machine, an OpenMP team whose second thread is starved "
                         "by another process runs slower than a single thread (0 = off)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train_log.jsonl"), "a")

    def log(**kw):
        kw["utc"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        logf.write(json.dumps(kw) + "\n")
        logf.flush()
        print(json.dumps(kw), flush=True)

    train, val = load("train"), load("val")
    windows = val_windows(val, args.seq, args.val_windows)
    model = make_model(args)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": nodecay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    ck = os.path.join(args.out, "ckpt.pt")
    step, tokens, wall = 0, 0, 0.0
    if os.path.exists(ck):
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, tokens, wall = st["step"], st["tokens"], st["wall"]
        log(event="resume", step=step, tokens=tokens, wall_s=wall)
    else:
        uni = unigram_baseline(train, windows)
        log(event="start", args=vars(args), params=sum(p.numel() for p in model.parameters()),
            train_tokens={d: int(v.size) for d, v in train.items()},
            val_tokens_scored={d: int(w[:, 1:].numel()) for d, w in windows.items()},
            unigram_val_loss=uni, unigram_val_ppl={k: math.exp(v) for k, v in uni.items()},
            torch=torch.__version__)
        v = evaluate(model, windows)
        log(event="val", step=0, tokens=0, wall_s=0.0, val_loss=v, val_ppl=math.exp(v["all"]))

    def save():
        tmp = ck + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "tokens": tokens,
                    "wall": wall, "args": vars(args), "config": model.config.to_dict()}, tmp)
        os.replace(tmp, ck)

    def lr_at(s):
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        if args.time_budget_min:
            p = min(1.0, wall / (args.time_budget_min * 60))
        else:
            p = min(1.0, (s - args.warmup) / max(1, args.steps - args.warmup))
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))

    def should_stop():
        if args.max_minutes is not None and wall >= args.max_minutes * 60:
            return True
        if args.time_budget_min is not None and wall >= args.time_budget_min * 60:
            return True
        if args.stop_at:
            now = dt.datetime.now(dt.timezone.utc)
            hh, mm = map(int, args.stop_at.split(":"))
            if (now.hour, now.minute) >= (hh, mm) and now.hour - hh < 6:
                return True
        return False

    last_ck = time.time()
    t0 = time.time()
    wall0 = wall
    run_loss = None
    threads = args.threads
    trial = {}
    while (args.time_budget_min or step < args.steps) and not should_stop():
        if args.adapt_threads and args.threads > 1:
            phase = step % args.adapt_threads
            if phase == 0:
                trial = {}
            if phase < 4:
                threads = 1 if phase < 2 else args.threads
            elif phase == 4 and len(trial) == 2:
                threads = min(trial, key=trial.get)
            torch.set_num_threads(threads)
        ts = time.time()
        rng = np.random.default_rng([args.seed, step])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        tot = 0.0
        for _ in range(args.accum):
            x, y = batch(train, rng, args.micro_batch, args.seq)
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)) / args.accum
            loss.backward()
            tot += loss.item()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.adapt_threads and args.threads > 1 and step % args.adapt_threads in (1, 3):
            trial[threads] = time.time() - ts  # the second step of each trial pair (the first warms up)
        step += 1
        tokens += args.micro_batch * args.accum * args.seq
        wall = wall0 + (time.time() - t0)
        run_loss = tot if run_loss is None else 0.95 * run_loss + 0.05 * tot
        if step % 10 == 0:
            log(event="train", step=step, tokens=tokens, wall_s=round(wall, 1), loss=round(tot, 4),
                loss_ema=round(run_loss, 4), lr=lr_at(step - 1), grad_norm=round(float(gn), 3),
                tok_per_s=round(tokens / max(wall, 1e-9), 1), threads=threads)
        if step % args.eval_every == 0:
            v = evaluate(model, windows)
            wall = wall0 + (time.time() - t0)
            log(event="val", step=step, tokens=tokens, wall_s=round(wall, 1), val_loss=v, val_ppl=math.exp(v["all"]))
        if time.time() - last_ck > args.ckpt_minutes * 60:
            save()
            last_ck = time.time()
    v = evaluate(model, windows)
    wall = wall0 + (time.time() - t0)
    save()
    log(event="end", step=step, tokens=tokens, wall_s=round(wall, 1), val_loss=v, val_ppl=math.exp(v["all"]))
    # the final weights as a Hugging Face checkpoint directory, the input of export.py
    model.save_pretrained(os.path.join(args.out, "hf"))


if __name__ == "__main__":
    main()
