"""Training data for a draft head: prompts kept apart from the benchmark, the target's own
continuations of them, and the target's hidden states along those continuations.

The prompts are built from text that ships with Python itself (the language reference in
``pydoc_data`` and the docstrings of standard-library modules) and from templates with random
numbers and topics written here. None of them is a ``paradec bench`` prompt (MT-Bench, HumanEval
and paradec's own prompt sets are never read), so the benchmark measures the head on prompts it
has not seen. The task mix mirrors the benchmark's categories: code, explanation, summarization
and questions over a document, translation, arithmetic word problems and open writing.

Continuations come from the target itself (greedy: exactly what greedy verification accepts),
generated in batches by the plain KV-cached loop shared with ``paradec convert``.
"""

from __future__ import annotations

import functools
import inspect
import random
from dataclasses import dataclass

import torch

from ..distill.data import TextPrompt

STDLIB = (
    "abc argparse array ast asyncio base64 bisect bz2 calendar cmath codecs collections colorsys concurrent.futures "
    "configparser contextlib copy csv dataclasses datetime decimal difflib dis email enum fnmatch fractions functools "
    "gettext glob gzip hashlib heapq html http.client inspect io ipaddress itertools json locale logging lzma math "
    "mimetypes numbers operator os os.path pathlib pickle platform pprint queue random re sched secrets select "
    "selectors shelve shutil signal smtplib socket sqlite3 ssl statistics string struct subprocess tarfile tempfile "
    "textwrap threading time tokenize traceback typing unicodedata unittest urllib.parse uuid wave weakref zipfile zlib"
).split()

TOPICS = (
    "learning a new language", "training for a marathon", "starting a vegetable garden", "saving money on groceries",
    "remote work", "public transport in big cities", "the history of the printing press", "how vaccines work",
    "photosynthesis", "black holes", "the water cycle", "volcanoes", "the Roman empire", "jazz music", "chess openings",
    "baking sourdough bread", "writing a cover letter", "preparing for a job interview", "time management",
    "renewable energy", "electric cars", "recycling plastic", "sleep and memory", "the human immune system",
    "machine learning", "databases", "version control with git", "computer networks", "cybersecurity for beginners",
    "climate change", "the stock market", "inflation", "starting a small business", "team leadership",
    "a trip to Japan", "hiking safety", "caring for a dog", "houseplants", "meditation", "healthy breakfasts",
    "the solar system", "ocean currents", "bees and pollination", "ancient Egypt", "the industrial revolution",
    "public speaking", "learning to code", "3D printing", "smartphones and attention", "urban cycling",
)
WRITING = (
    "Write a short story about {t}.", "Give me five practical tips about {t}.", "Explain {t} to a ten-year-old.",
    "Write a blog post introduction about {t}.", "What are the pros and cons of {t}?",
    "Write a formal email to a colleague proposing a workshop on {t}.", "Write a haiku and a limerick about {t}.",
    "Describe three common misconceptions about {t}.", "Plan a one-week study schedule on {t}.",
)
DOC_TASKS = (
    "Summarize this text in three sentences.", "List the key points as bullet points.",
    "Explain this to a beginner, with an example.", "Write two quiz questions about it, with answers.",
    "What is the most important rule described here? Answer briefly.",
)
LANGUAGES = ("French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "Chinese", "Japanese")
ITEMS = ("apples", "notebooks", "bus tickets", "coffee bags", "pencils", "concert tickets", "bricks", "lamps")


@dataclass(frozen=True)
class _Doc:
    qualname: str
    signature: str
    summary: str  # the docstring's first sentence
    text: str  # the whole docstring


@functools.lru_cache(maxsize=1)
def _docs() -> tuple[_Doc, ...]:
    import warnings

    with warnings.catch_warnings():  # reading some modules' members warns about deprecations
        warnings.simplefilter("ignore")
        return tuple(_module_docs())


def _module_docs():
    import importlib

    for mod_name in STDLIB:
        try:
            mod = importlib.import_module(mod_name)
        except Exception:  # noqa: BLE001 - a module missing on this platform is simply skipped
            continue
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if len(doc) < 40 or getattr(obj, "__module__", mod_name) not in (mod_name, None):
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            first = doc.split("\n\n")[0].replace("\n", " ").strip()
            summary = first.split(". ")[0].rstrip(".")
            yield _Doc(f"{mod_name}.{name}", sig, summary, doc)


@functools.lru_cache(maxsize=1)
def _chunks(min_chars: int = 700, max_chars: int = 2200) -> tuple[str, ...]:
    """Passages of the Python language reference, each a few hundred tokens."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for _, text in sorted(topics.items()):
        buf = ""
        for para in text.split("\n\n"):
            para = para.strip()
            if not para:
                continue
            if buf and len(buf) + len(para) > max_chars:
                if len(buf) >= min_chars:
                    out.append(buf)
                buf = ""
            buf = f"{buf}\n\n{para}" if buf else para
        if len(buf) >= min_chars:
            out.append(buf[:max_chars])
    return tuple(out)


def head_prompts(n: int, seed: int = 0) -> list[TextPrompt]:
    """``n`` prompts of the mix described above (deterministic for a seed)."""
    rng = random.Random(seed)
    docs, chunks = _docs(), _chunks()

    def code() -> str:
        d = rng.choice(docs)
        return rng.choice((
            f"Write a Python function `{d.qualname.split('.')[-1]}{d.signature}` that does this: {d.summary}.",
            f"What does `{d.qualname}` do in Python? Show a short example.",
            f"Explain this docstring and give an example of its use:\n\n{d.text[:1200]}",
        ))

    def doc() -> str:
        return f"{rng.choice(chunks)}\n\n{rng.choice(DOC_TASKS)}"

    def translate() -> str:
        d = rng.choice(docs)
        return f"Translate the following text into {rng.choice(LANGUAGES)}:\n\n{d.text.split(chr(10) * 2)[0][:600]}"

    def math() -> str:
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
        item = rng.choice(ITEMS)
        return rng.choice((
            f"A shop sells {item} at ${a} each. Ana buys {b} and pays with ${a * b + c * 10}. How much change does she get? Think step by step.",
            f"What is {a} * {b} + {c}? Show your work.",
            f"A train travels {a * c} km in {c} hours. At the same speed, how far does it go in {b} hours? Explain.",
            f"Solve for x: {c}x + {a} = {c * b + a}. Explain each step.",
        ))

    def writing() -> str:
        return rng.choice(WRITING).format(t=rng.choice(TOPICS))

    kinds = (("code", code, 5), ("doc", doc, 5), ("translate", translate, 2), ("math", math, 3), ("writing", writing, 4))
    bag = [(name, make) for name, make, w in kinds for _ in range(w)]
    return [TextPrompt(f"head/{name}", i, make()) for i, (name, make) in enumerate(rng.choice(bag) for _ in range(n))]


@dataclass
class Features:
    """The target's hidden states along its own continuations, as flat rows.

    Row r is one position of one continuation (from the last prompt token on): ``feats[r]`` is
    the target's last hidden state there, ``tokens[r]`` the token at that position, and
    ``left[r]`` how many rows of the same continuation follow it.
    """

    feats: torch.Tensor  # [N, H]
    tokens: torch.Tensor  # [N] long
    left: torch.Tensor  # [N] long

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def select(self, seqs: slice) -> "Features":
        """Continuations ``seqs`` (in order) as their own Features."""
        starts = (self.left[:-1] == 0).nonzero()[:, 0] + 1  # where a continuation begins
        starts = torch.cat([torch.zeros(1, dtype=torch.long), starts, torch.tensor([len(self)])])
        idx = range(len(starts) - 1)[seqs]
        if not len(idx):
            return Features(self.feats[:0], self.tokens[:0], self.left[:0])
        lo, hi = int(starts[idx[0]]), int(starts[idx[-1] + 1])
        return Features(self.feats[lo:hi], self.tokens[lo:hi], self.left[lo:hi])


@torch.no_grad()
def features(model, records: list[dict], max_len: int = 512, batch: int = 8, dtype=torch.float32, log=None) -> Features:
    """Run the target over each record's prompt + continuation (right-padded batches) and keep
    the rows from the last prompt token to the end. Prompts are cut from the left to fit ``max_len``."""
    dev = next(model.parameters()).device
    seqs = []
    for r in records:
        resp = list(r["response_ids"])[: max_len - 1]
        if not resp:
            continue
        prompt = list(r["prompt_ids"])[-(max_len - len(resp)):]
        seqs.append((prompt + resp, len(prompt) - 1))
    feats, toks, left = [], [], []
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
    by_index: dict[int, tuple] = {}
    for n_done, chunk in enumerate(chunks):
        width = max(len(seqs[i][0]) for i in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        am = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
            am[b, : len(seqs[i][0])] = 1
        out = model(input_ids=ids.to(dev), attention_mask=am.to(dev), output_hidden_states=True)
        hid = out.hidden_states[-1]  # [b, width, H]
        for b, i in enumerate(chunk):
            seq, start = seqs[i]
            by_index[i] = (hid[b, start : len(seq)].to("cpu", dtype), torch.tensor(seq[start:]))
        if log is not None and (n_done + 1) % 20 == 0:
            log(f"features: {n_done + 1}/{len(chunks)} batches")
    for i in range(len(seqs)):  # back in record order
        f, t = by_index[i]
        feats.append(f)
        toks.append(t)
        left.append(torch.arange(len(t) - 1, -1, -1))
    if not feats:
        raise ValueError("no continuations to take features from")
    return Features(torch.cat(feats), torch.cat(toks), torch.cat(left))


def keep_vocab(records: list[dict], k: int, always: set[int] = frozenset()) -> torch.Tensor:
    """The ``k`` tokens the target generates most often in ``records`` (plus ``always``), sorted."""
    from collections import Counter

    counts = Counter(t for r in records for t in r["response_ids"])
    keep = set(always) | {t for t, _ in counts.most_common(max(k - len(always), 0))}
    return torch.tensor(sorted(keep), dtype=torch.long)
