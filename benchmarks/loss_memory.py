"""Peak memory of the forward-KL loss: TRL's chunked divergence against a naive full-logits loss, measured.

    .venv/bin/python benchmarks/loss_memory.py [--tokens 2048] [--hidden 1024] [--vocab 151936]

Each variant runs forward and backward once, in its own process, on random hidden states and output
embeddings for a student and a teacher at the given size (Qwen3's vocabulary by default, chosen so both
fit in memory); its peak resident memory above the same process's baseline (torch imported, inputs
allocated) is the loss's. One JSON object per line.
"""

import argparse
import json
import resource
import subprocess
import sys


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(variant: str, tokens: int, hidden: int, vocab: int) -> dict:
    import torch
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    torch.manual_seed(0)
    h_s = torch.randn(tokens, hidden, requires_grad=True)
    h_t = torch.randn(tokens, hidden)
    w_s = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
    w_t = torch.randn(vocab, hidden) * 0.02
    baseline = peak_mib()
    if variant == "chunked":
        per_token, _ = ChunkedDivergenceFunction.apply(h_s, w_s, None, h_t, w_t, None, 0.0)
        loss = per_token.mean()
    else:  # the (tokens x vocabulary) logits of both models, then KL(teacher || student)
        log_p_s = torch.log_softmax(h_s @ w_s.T, dim=-1)
        log_p_t = torch.log_softmax(h_t @ w_t.T, dim=-1)
        loss = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    loss.backward()
    return {"loss": variant, "tokens": tokens, "hidden": hidden, "vocab": vocab, "value": round(float(loss), 6),
            "peak_mib_above_inputs": round(peak_mib() - baseline, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--one", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tokens, args.hidden, args.vocab)), flush=True)
        return
    figures = {}
    for variant in ("chunked", "naive"):
        done = subprocess.run([sys.executable, __file__, "--one", variant, "--tokens", str(args.tokens), "--hidden",
                               str(args.hidden), "--vocab", str(args.vocab)], capture_output=True, text=True,
                              check=True)
        figures[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(figures[variant]), flush=True)
    chunked, naive = figures["chunked"], figures["naive"]
    print(json.dumps({"figure": "forward-KL loss memory", "chunked_loss_peak_mib": chunked["peak_mib_above_inputs"],
                      "naive_loss_peak_mib": naive["peak_mib_above_inputs"],
                      "same_value": abs(chunked["value"] - naive["value"]) < 1e-3 * max(1.0, abs(naive["value"]))}),
          flush=True)


if __name__ == "__main__":
    main()
