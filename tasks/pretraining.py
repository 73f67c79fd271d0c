"""The generated pretraining corpus of the embedded tiny T5 (`tools/pretrain_tiny.py`).

A deterministic stream of text-to-text examples from the same word inventory as the built-in tasks
(`tasks.builtin`). Two kinds of examples are mixed:

- Prefixed task families: the input starts with a text prefix that names the task. Three are the
  built-in tasks (`sentiment: `, `topic: `, `keyword: `, drawn from generator streams disjoint
  from the built-in tasks' train/validation/test streams); four more only exist here (`copy: `,
  `first word: `, `last word: `, `count: `), so the model learns to follow a prefix rather than
  three fixed mappings.
- An LM-style objective as in the LM-adapted T5 (prefix LM): a random sentence cut at a random
  point, the input is its beginning and the target its continuation. These inputs carry no prefix.

So the frozen model has seen every built-in task only *with* its prefix; without it, an input is
just text to continue. That is the gap a prompt has to close in `make demo`.
"""

from collections.abc import Iterator

import numpy as np

from tasks import builtin

# Name -> (prefix, share of the stream). The LM objective has no prefix.
FAMILIES = {
    "sentiment": ("sentiment: ", 0.15),
    "topic": ("topic: ", 0.12),
    "keyword": ("keyword: ", 0.1),
    "copy": ("copy: ", 0.12),
    "first": ("first word: ", 0.1),
    "last": ("last word: ", 0.1),
    "count": ("count: ", 0.1),
    "lm": ("", 0.21),
}
# Built-in families draw from generator streams [task seed, 100 + shard]: the built-in splits use
# stream indices 0-2, so pretraining never replays their train, validation or test streams.
_STREAM_OFFSET = 100
_CORPUS_SEED = 44

# Everyday words that only the pretraining text uses (the built-in tasks' inputs do not).
GENERAL_WORDS = tuple(
    """
    about after again air all also always animal answer any around ask away back ball bank bed
    before begin below best between big bird black blue boat body bottle box boy bring brother
    build busy buy call can car carry cat chair change child city class clean clear close cloud
    coat cold color come cook corner could country cup cut dark daughter deep desk dinner do dog
    door down draw dream dress drink drive dry early earth east eat egg end enough evening every
    eye face fall family far farm fast father field find fire fish floor flower fly follow foot
    forest friend front full game garden girl give glass go gold grass green ground group grow hair
    half hand hard hat head hear heart heavy help here high hill hold home horse hot hour house how
    idea just keep key kind king kitchen know lake land large late laugh learn leave left letter
    light like line list listen little live long look lose low make man many map market mother
    mountain mouth move much name near need never new next night north note now number ocean old
    open other paper park party people pick picture plan plant play point poor pull push question
    quick quiet rain read red remember rest rich right river road rock room round run salt same
    school sea seat second see sell send ship shoe shop short show side sing sister sit sky sleep
    slow small smile snow soft south speak spring stand star start station stone stop store story
    street strong student study summer sun table take talk tall teacher tell thank think three
    time tired town train tree try turn under up use village visit voice wait walk wall want
    wash watch water way week west wet white wide wind window winter woman wood word work world
    write year yellow young
    """.split()
)
ALL_WORDS = tuple(
    sorted(
        set(builtin.FILLER_WORDS)
        | set(builtin.POSITIVE_WORDS)
        | set(builtin.NEGATIVE_WORDS)
        | {word for words in builtin.TOPIC_WORDS.values() for word in words}
        | {builtin.KEYWORD_MARKER}
    )
)
NUMBER_WORDS = tuple(str(n) for n in range(1, 21))


def _sentence(rng: np.random.Generator, low: int, high: int) -> list[str]:
    """Random words: filler, everyday words and the built-in tasks' content words mixed."""
    num_words = int(rng.integers(low, high + 1))
    kinds = rng.choice(3, size=num_words, p=(0.4, 0.35, 0.25))
    pools = (builtin.FILLER_WORDS, GENERAL_WORDS, ALL_WORDS)
    return [str(rng.choice(pools[kind])) for kind in kinds]


def _extra_example(family: str, rng: np.random.Generator) -> tuple[str, str]:
    """One example of a family that exists only in pretraining."""
    if family == "copy":
        words = _sentence(rng, 2, 6)
        return " ".join(words), " ".join(words)
    if family == "first":
        words = _sentence(rng, 3, 10)
        return " ".join(words), words[0]
    if family == "last":
        words = _sentence(rng, 3, 10)
        return " ".join(words), words[-1]
    if family == "count":
        words = _sentence(rng, 1, 9)
        return " ".join(words), str(len(words))
    if family == "lm":
        words = _sentence(rng, 6, 18)
        cut = int(rng.integers(3, len(words) - 2))
        return " ".join(words[:cut]), " ".join(words[cut : cut + 8])
    raise ValueError(f"Unknown pretraining family {family!r}; choose one of {sorted(FAMILIES)}.")


def examples(shard: int = 0) -> Iterator[tuple[str, str, str]]:
    """Yields `(family, inputs, targets)` forever, deterministically for a `shard` index.

    Args:
      shard: selects an independent stream (the pretraining script uses 0; other shards give
        fresh text for a held-out loss).
    """
    names = tuple(FAMILIES)
    shares = np.array([FAMILIES[name][1] for name in names])
    chooser = np.random.default_rng([_CORPUS_SEED, shard])
    streams = {
        name: np.random.default_rng(
            [builtin.task_seed(name), _STREAM_OFFSET + shard]
            if name in builtin.LABELS
            else [_CORPUS_SEED, shard, index]
        )
        for index, name in enumerate(names)
    }
    counters = dict.fromkeys(names, 0)
    while True:
        name = names[int(chooser.choice(len(names), p=shares / shares.sum()))]
        if name in builtin.LABELS:
            text, target = builtin.generate_one(name, streams[name], counters[name])
        else:
            text, target = _extra_example(name, streams[name])
        counters[name] += 1
        yield name, FAMILIES[name][0] + text, target


def text_lines(num_examples: int, shard: int = 0) -> list[str]:
    """Inputs and targets of the first `num_examples` examples as lines (vocabulary training)."""
    lines = []
    stream = examples(shard)
    for _ in range(num_examples):
        _, inputs, targets = next(stream)
        lines.extend((inputs, targets))
    return lines
