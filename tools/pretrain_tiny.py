r"""Pretrains the embedded tiny T5 1.1 and its SentencePiece vocabulary on the generated corpus.

The corpus is `tasks.pretraining`: seven task families signalled by a text prefix (the three
built-in tasks among them) and a prefix-LM objective without prefix. The script

1. trains a SentencePiece BPE vocabulary on the corpus's first examples (T5's special ids:
   pad 0, EOS 1, UNK 2, no BOS),
2. trains every parameter of a T5 1.1-shaped model (gated GELU, untied logits, relative position
   buckets) from scratch (Adafactor or AdamW, warmup then cosine decay), without dropout, on
   padded batches of the stream,
3. measures per-family exact match with greedy decoding on a held-out shard of the stream, and
4. writes `sentencepiece.model`, a legacy T5X checkpoint `checkpoint_<steps>/` (what
   `prompt_tuning.t5.checkpoints.load_checkpoint` reads) and `card.json` (sizes, corpus, steps,
   losses, accuracies, time) into `--output`. Existing files there are replaced.

Everything is seeded; on the same machine and library versions a rerun reproduces the checkpoint.
The committed one was made with the defaults:

  python tools/pretrain_tiny.py --output prompt_tuning/pretrained/t5_tiny
"""

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

import jax
import numpy as np
import optax
import sentencepiece as spm
from flax import linen as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prompt_tuning.t5 import checkpoints, decoding  # noqa: E402
from prompt_tuning.t5 import config as t5_config  # noqa: E402
from prompt_tuning.t5.network import EncoderDecoder  # noqa: E402
from prompt_tuning.train import losses  # noqa: E402
from tasks import pretraining  # noqa: E402

EOS_ID = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="prompt_tuning/pretrained/t5_tiny")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input-length", type=int, default=32)
    parser.add_argument("--target-length", type=int, default=16)
    parser.add_argument("--optimizer", choices=("adafactor", "adamw"), default="adamw")
    parser.add_argument(
        "--learning-rate", type=float, default=3e-3, help="Peak rate (Adafactor: try 0.01-0.02)."
    )
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--vocab-size", type=int, default=512, help="SentencePiece pieces.")
    parser.add_argument("--vocab-examples", type=int, default=20_000)
    parser.add_argument("--emb-dim", type=int, default=128)
    parser.add_argument("--mlp-dim", type=int, default=384)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=3, help="Encoder and decoder layers each.")
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train_vocabulary(directory: str, vocab_size: int, num_examples: int) -> str:
    """Trains the SentencePiece model on the corpus; returns its path."""
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(pretraining.text_lines(num_examples)) + "\n")
    prefix = os.path.join(directory, "sentencepiece")
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return prefix + ".model"


def encode(processor: spm.SentencePieceProcessor, text: str, length: int) -> list[int]:
    """Token ids + EOS, cut to `length` (the EOS is kept)."""
    ids = processor.encode(text)[: length - 1] + [EOS_ID]
    return ids + [0] * (length - len(ids))


def batches(
    processor: spm.SentencePieceProcessor, batch: int, lengths: tuple[int, int], shard: int
) -> Iterator[tuple[dict[str, np.ndarray], list[str]]]:
    """Padded encoder-decoder batches of the stream, with each row's family."""
    stream = pretraining.examples(shard)
    while True:
        rows = [next(stream) for _ in range(batch)]
        inputs = np.array([encode(processor, x, lengths[0]) for _, x, _ in rows], np.int32)
        targets = np.array([encode(processor, y, lengths[1]) for _, _, y in rows], np.int32)
        decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
        yield (
            {
                "encoder_input_tokens": inputs,
                "decoder_input_tokens": decoder_inputs,
                "decoder_target_tokens": targets,
            },
            [family for family, _, _ in rows],
        )


def make_optimizer(args: argparse.Namespace) -> optax.GradientTransformation:
    """Linear warmup, then cosine decay to a tenth; Adafactor (T5's optimizer) or AdamW."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.learning_rate, args.warmup_steps, max(args.steps, args.warmup_steps + 1),
        end_value=args.learning_rate / 10,
    )  # fmt: skip
    if args.optimizer == "adamw":
        return optax.adamw(schedule, b2=0.98, weight_decay=0.01)
    return optax.adafactor(
        learning_rate=schedule, multiply_by_parameter_scale=False, clipping_threshold=1.0
    )


def exact_match(
    model: EncoderDecoder,
    params,
    processor: spm.SentencePieceProcessor,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Greedy-decoded exact match per family on a held-out shard of the stream."""
    stream = batches(processor, args.eval_examples, (args.input_length, args.target_length), 1)
    batch, families = next(stream)
    decode = jax.jit(
        lambda p, x: decoding.greedy_decode(model, p, x, args.target_length, eos_id=EOS_ID)
    )
    predictions = np.asarray(decode(params, batch["encoder_input_tokens"]))
    hits = collections.defaultdict(list)
    for family, predicted, target in zip(
        families, predictions, batch["decoder_target_tokens"], strict=True
    ):
        hits[family].append(
            processor.decode([int(t) for t in predicted if t > EOS_ID])
            == processor.decode([int(t) for t in target if t > EOS_ID])
        )
    return {family: float(np.mean(values)) for family, values in sorted(hits.items())}


def main(argv: list[str] | None = None) -> dict:
    """Runs the four steps; returns the model card."""
    args = parse_args(argv)
    start = time.time()
    os.makedirs(args.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = train_vocabulary(tmp, args.vocab_size, args.vocab_examples)
        processor = spm.SentencePieceProcessor(model_file=spm_path)
        shutil.copy(spm_path, os.path.join(args.output, "sentencepiece.model"))
    num_pieces = processor.get_piece_size()
    print(f"vocabulary: {num_pieces} pieces", flush=True)

    config = t5_config.t5_1_1(
        "small",
        vocab_size=-(-num_pieces // 128) * 128,
        emb_dim=args.emb_dim,
        mlp_dim=args.mlp_dim,
        num_heads=args.num_heads,
        head_dim=args.emb_dim // args.num_heads,
        num_encoder_layers=args.layers,
        num_decoder_layers=args.layers,
        dropout_rate=0.0,
    )
    model = EncoderDecoder(config)
    lengths = (args.input_length, args.target_length)
    train_stream = batches(processor, args.batch, lengths, shard=0)
    first, _ = next(train_stream)
    params = nn.unbox(
        model.init(jax.random.PRNGKey(args.seed), **first, enable_dropout=False)["params"]
    )
    optimizer = make_optimizer(args)
    opt_state = optimizer.init(params)
    print(f"model: {t5_config.num_params(config):,} parameters, {config}", flush=True)

    @jax.jit
    def train_step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, **batch, enable_dropout=False)
            per_token = "NUM_REAL_TARGET_TOKENS"  # the loss the committed model was trained with
            loss, aux = losses.weighted_loss(
                logits, batch["decoder_target_tokens"], None, loss_normalizing_factor=per_token
            )
            return loss, aux

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux

    history = []
    window = []
    batch = first
    for step in range(1, args.steps + 1):
        params, opt_state, aux = train_step(params, opt_state, batch)
        window.append(aux)
        if step % args.log_every == 0 or step == args.steps:
            loss = float(np.mean([float(a["cross_ent_loss"]) for a in window]))
            accuracy = float(np.mean([float(a["accuracy"]) for a in window]))
            window = []
            history.append({"step": step, "loss": loss, "token_accuracy": accuracy})
            print(
                f"step {step}/{args.steps}  loss {loss:.4f}  token accuracy {accuracy:.3f}"
                f"  {time.time() - start:.0f}s",
                flush=True,
            )
        batch, _ = next(train_stream)

    accuracies = exact_match(model, params, processor, args)
    print("held-out exact match: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracies.items()))
    for name in os.listdir(args.output):
        if name.startswith("checkpoint_"):
            shutil.rmtree(os.path.join(args.output, name))
    checkpoint = os.path.join(args.output, f"checkpoint_{args.steps}")
    checkpoints.save_t5x_checkpoint(jax.device_get(params), checkpoint, step=args.steps)
    card = {
        "architecture": "T5 1.1 (gated GELU MLP, untied logits, no dropout)",
        "config": {
            "vocab_size": config.vocab_size,
            "sentencepiece_pieces": num_pieces,
            "emb_dim": config.emb_dim,
            "mlp_dim": config.mlp_dim,
            "num_heads": config.num_heads,
            "head_dim": config.head_dim,
            "num_encoder_layers": config.num_encoder_layers,
            "num_decoder_layers": config.num_decoder_layers,
        },
        "parameters": t5_config.num_params(config),
        "corpus": {
            name: {"prefix": prefix, "share": share}
            for name, (prefix, share) in pretraining.FAMILIES.items()
        },
        "training": {
            "steps": args.steps,
            "batch_size": args.batch,
            "input_length": args.input_length,
            "target_length": args.target_length,
            "optimizer": args.optimizer,
            "learning_rate": args.learning_rate,
            "warmup_steps": args.warmup_steps,
            "seed": args.seed,
        },
        "final_loss": history[-1]["loss"],
        "loss_history": history,
        "held_out_exact_match": accuracies,
        "seconds": round(time.time() - start, 1),
        "machine": f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}",
        "checkpoint": os.path.basename(checkpoint),
        "command": "python tools/pretrain_tiny.py " + " ".join(argv or sys.argv[1:]),
    }
    with open(os.path.join(args.output, "card.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    print(f"wrote {checkpoint} and card.json in {card['seconds']:.0f}s", flush=True)
    return card


if __name__ == "__main__":
    main()
