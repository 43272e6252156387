"""Seeded synthetic data for the demo: support tickets to classify, and a small world of facts.

Support-ticket routing is the everyday enterprise fine-tuning job, so the demo recipe trains on it. The same
module writes the text the built-in tiny base is pre-trained on (ticket prose without labels, world facts),
multiple-choice questions about those facts (a general eval that a fine-tune must not regress), and replay
rows of those facts that the demo mixes into training so that it does not. Everything comes from
`random.Random` with explicit seeds, so the shipped files regenerate byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from lifecycle.errors import UserInputError

SYSTEM_PROMPT = (
    "You are a support-ticket router. Read the customer's ticket and reply with exactly one category: "
    "billing, technical, account, shipping, refund or feedback."
)
LABELS: tuple[str, ...] = ("billing", "technical", "account", "shipping", "refund", "feedback")

# Paths of the shipped demo files, relative to the repository root (see `regenerate`).
TICKETS_DIR = Path("recipes/data/support-tickets")
FACTS_FILE = Path("evals/data/general-facts.jsonl")
REPLAY_FILE = Path("recipes/data/replay/pretraining-facts.jsonl")

_FIRST = (
    "Anna", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kenji", "Lena",
    "Marco", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei", "Yusuf", "Zoe",
)  # fmt: skip
_LAST = (
    "Adams", "Baker", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jones", "Kowalski",
    "Lopez", "Meyer", "Novak", "Okafor", "Patel", "Rossi", "Silva", "Tanaka", "Weber",
)  # fmt: skip
_PRODUCTS = (
    "wireless headphones", "standing desk", "coffee grinder", "smart watch", "hiking backpack", "desk lamp",
    "air purifier", "yoga mat", "bluetooth speaker", "office chair", "water bottle", "laptop sleeve",
    "electric kettle", "running shoes", "phone case", "mechanical keyboard",
)  # fmt: skip
_PLANS = ("Basic plan", "Pro plan", "Team plan", "Family plan", "Business plan")
_DEVICES = ("iPhone", "Android phone", "Windows laptop", "MacBook", "Chromebook", "iPad", "Linux desktop")
_CARRIERS = ("UPS", "FedEx", "DHL", "the postal service")
_CITIES = ("Lisbon", "Denver", "Osaka", "Leeds", "Austin", "Lyon", "Toronto", "Perth", "Bergen", "Porto")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October")
_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "billing": {
        "subject": ("Charged twice this month", "Question about my invoice", "Wrong amount on my bill",
                    "Card declined on renewal", "Unexpected charge of {amount}", "Invoice {order} is wrong"),
        "body": ("I was charged {amount} twice for the {plan} on {date}.",
                 "My invoice {order} shows {amount} but the {plan} should cost less.",
                 "There is a charge of {amount} on my card that I do not recognise.",
                 "My card was declined when the {plan} tried to renew on {date}.",
                 "Can you send me a corrected invoice for order {order}? The tax looks wrong.",
                 "I switched to the {plan} but I am still billed the old price of {amount}."),
        "extra": ("Please fix the billing and send a new receipt.", "I need the invoice for my accounting.",
                  "The payment method on file is a Visa card.", "My bank statement shows the double charge."),
    },
    "technical": {
        "subject": ("App crashes on start", "Error {error} when syncing", "Cannot connect to the server",
                    "Page keeps loading forever", "Bug in the latest update", "Feature stopped working"),
        "body": ("The app crashes every time I open it on my {device}.",
                 "I get error {error} whenever I try to sync my data from the {device}.",
                 "Since the update on {date} the dashboard shows a blank page on my {device}.",
                 "Uploads fail with error {error} after about {days} seconds.",
                 "The search feature returns no results even for items I know exist.",
                 "Notifications stopped working on my {device} after I reinstalled the app."),
        "extra": ("I already tried restarting and reinstalling.", "Clearing the cache did not help.",
                  "It worked fine until last week.", "I can send screenshots or logs if that helps."),
    },
    "account": {
        "subject": ("Cannot log in", "Reset my password", "Change the email on my account",
                    "Account locked", "Two-factor code not arriving", "Update my profile details"),
        "body": ("I cannot log in to my account even though my password is correct.",
                 "The password reset link never arrives at {email}.",
                 "Please change the email on my account from {email} to my new work address.",
                 "My account was locked after too many sign-in attempts on {date}.",
                 "The two-factor code does not arrive on my {device}.",
                 "How do I add a second user to my {plan} account?"),
        "extra": ("My username is {user}.", "I still have access to my old email address.",
                  "I need access today for work.", "Please verify my identity however you need."),
    },
    "shipping": {
        "subject": ("Where is my order?", "Package not delivered", "Tracking has not updated",
                    "Order {order} is late", "Wrong delivery address", "Delivery delayed again"),
        "body": ("My order {order} for a {product} has not arrived after {days} days.",
                 "Tracking for order {order} has said in transit with {carrier} since {date}.",
                 "The {carrier} driver marked my {product} as delivered but nothing is at my door.",
                 "I need to change the delivery address for order {order} to {city}.",
                 "My {product} was supposed to arrive on {date} and there is still no update.",
                 "Can you ship order {order} with express delivery to {city} instead?"),
        "extra": ("I need it before the weekend.", "The tracking number does not work on the carrier site.",
                  "Nobody left a delivery note.", "I live in {city} if that matters."),
    },
    "refund": {
        "subject": ("Refund request", "Cancel my subscription", "Return for order {order}",
                    "I want my money back", "Cancel order {order}", "Refund not received yet"),
        "body": ("I would like to return the {product} from order {order} and get a refund of {amount}.",
                 "Please cancel my {plan} and refund the last payment of {amount}.",
                 "I cancelled order {order} on {date} but the refund of {amount} has not arrived.",
                 "The {product} is not what I expected, so I want to send it back for a refund.",
                 "Please cancel order {order} before it ships; I ordered the wrong {product}.",
                 "I asked for a refund {days} days ago and I am still waiting for the money."),
        "extra": ("The item is unused and still in the box.", "Please confirm when the refund is processed.",
                  "I do not want store credit.", "I no longer need the service."),
    },
    "feedback": {
        "subject": ("Great service", "Suggestion for the app", "Thank you to your team",
                    "Feedback on the new design", "Idea for a feature", "Loving the {product}"),
        "body": ("I just wanted to say the {product} is excellent and arrived quickly.",
                 "It would be great if the app had a dark mode on the {device}.",
                 "Your support agent was very kind and solved my issue in minutes.",
                 "The new design looks clean, but the menu font is a little small.",
                 "Please consider adding a way to export my data as a spreadsheet.",
                 "I have used the {plan} for a year and I recommend it to all my friends."),
        "extra": ("Keep up the good work.", "No reply needed, just sharing.", "Thanks for listening.",
                  "I left a five star review as well."),
    },
}  # fmt: skip
_GREETINGS = ("Hello,", "Hi,", "Hi team,", "Dear support,", "Good morning,", "Hey there,", "")
_CLOSINGS = ("Thanks,", "Thank you,", "Best regards,", "Cheers,", "Kind regards,", "Regards,")


def _slots(rng: random.Random) -> dict[str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return {
        "name": f"{first} {last}",
        "user": f"{first.lower()}{rng.randint(1, 99)}",
        "email": f"{first.lower()}.{last.lower()}@example.com",
        "order": f"#{rng.randint(10000, 99999)}",
        "amount": f"${rng.randint(5, 400)}.{rng.choice(('00', '49', '99'))}",
        "product": rng.choice(_PRODUCTS),
        "plan": rng.choice(_PLANS),
        "device": rng.choice(_DEVICES),
        "carrier": rng.choice(_CARRIERS),
        "city": rng.choice(_CITIES),
        "date": f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}",
        "days": str(rng.randint(3, 30)),
        "error": f"E-{rng.randint(100, 999)}",
    }


def _ticket_text(label: str, rng: random.Random) -> str:
    parts, slots = _TEMPLATES[label], _slots(rng)
    body = [rng.choice(parts["body"])]
    if rng.random() < 0.6:
        body.append(rng.choice(parts["extra"]))
    greeting = rng.choice(_GREETINGS)
    lines = [f"Subject: {rng.choice(parts['subject'])}", ""]
    lines += [greeting] if greeting else []
    lines += [" ".join(body), "", rng.choice(_CLOSINGS), "{name}"]
    return "\n".join(lines).format(**slots)


def make_tickets(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` distinct labelled tickets in chat `messages` form, labels balanced (round robin, then shuffled)."""
    rng = random.Random(f"tickets-{seed}")
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    rng.shuffle(labels)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for label in labels:
        text = _ticket_text(label, rng)
        while text in seen:  # duplicates are rare; redraw so that no split can leak a ticket into another
            text = _ticket_text(label, rng)
        seen.add(text)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ]
        rows.append({"id": f"ticket-{seed}-{len(rows):05d}", "messages": messages})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_demo_data(out_dir: Path, seed: int = 0, n_train: int = 400, n_eval: int = 100) -> dict[str, Path]:
    """Write `train.jsonl` and `eval.jsonl` from one pool of distinct tickets: no eval ticket is in train."""
    rows = make_tickets(n_train + n_eval, seed)
    return {
        "train": _write_jsonl(Path(out_dir) / "train.jsonl", rows[:n_train]),
        "eval": _write_jsonl(Path(out_dir) / "eval.jsonl", rows[n_train:]),
    }


# ------------------------------------------------------------------------------------- the world of facts

_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)  # fmt: skip
_COLORS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
_OBJECTS = (
    "apple", "kite", "boat", "lamp", "chair", "door", "hat", "cup", "book", "ball", "car", "bird", "fence",
    "shirt", "tent", "bike", "flag", "vase", "mug", "sofa", "rug", "bell", "key", "drum",
)  # fmt: skip
_OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("day", "night"), ("open", "closed"),
    ("old", "new"), ("happy", "sad"), ("early", "late"), ("light", "dark"), ("full", "empty"), ("wet", "dry"),
    ("hard", "soft"), ("loud", "quiet"), ("rich", "poor"), ("strong", "weak"), ("high", "low"),
    ("thick", "thin"), ("near", "far"), ("clean", "dirty"), ("cheap", "expensive"), ("sweet", "sour"),
    ("first", "last"), ("push", "pull"),
)  # fmt: skip
_SYLLABLES = (
    "ba", "lo", "mi", "ra", "ven", "tor", "sel", "ka", "nu", "dor", "fi", "la", "mar", "zen", "quo", "ri",
    "tal", "bre", "go", "sun",
)  # fmt: skip


def _world() -> dict[str, list[tuple[str, str]]]:
    """The fixed facts, kind -> [(subject, answer)]; no seed, so one eval file fits the base of any seed."""
    rng = random.Random("world-v1")
    names: list[str] = []
    while len(names) < 48:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if name not in names:
            names.append(name)
    return {
        "capital": [(names[i], names[i + 24]) for i in range(24)],
        "color": [(obj, rng.choice(_COLORS)) for obj in _OBJECTS],
        "sum": [
            (f"{_NUMBERS[a]} plus {_NUMBERS[b]}", _NUMBERS[a + b]) for a in range(1, 7) for b in range(1, 7)
        ],
        "opposite": list(_OPPOSITES),
    }


# Repetition is how a tiny model memorises facts within seconds; ticket prose teaches it the domain's words.
# More of either, or longer pre-training, made LoRA fine-tunes of the base slower to learn (measured).
FACT_REPEATS, CORPUS_TICKETS = 12, 200
_STATEMENT = {
    "capital": "The capital of {0} is {1}.",
    "color": "The {0} is {1}.",
    "sum": "{0} is {1}.",
    "opposite": "The opposite of {0} is {1}.",
}
_QUESTION = {
    "capital": "What is the capital of {0}?",
    "color": "What color is the {0}?",
    "sum": "What is {0}?",
    "opposite": "What is the opposite of {0}?",
}


def pretraining_corpus(seed: int) -> list[str]:
    """Plain text for the tiny base's pre-training: world facts (each stated many times), unlabelled tickets.

    The ticket prose teaches the domain's words without the classification task, so the base cannot route
    tickets until it is fine-tuned; the facts give it knowledge that a careless fine-tune can lose.
    """
    rng = random.Random(f"pretrain-{seed}")
    facts = [(kind, pair) for kind, pairs in _world().items() for pair in pairs]
    lines: list[str] = []
    for _ in range(FACT_REPEATS):
        rng.shuffle(facts)
        for start in range(0, len(facts), 6):
            sentences = [_STATEMENT[kind].format(*pair) for kind, pair in facts[start : start + 6]]
            lines.append(" ".join(s[0].upper() + s[1:] for s in sentences))
    # A ticket stream of its own (another seed), so the base never reads the demo's train or eval tickets.
    lines += [row["messages"][1]["content"] for row in make_tickets(CORPUS_TICKETS, seed + 1_000_003)]
    rng.shuffle(lines)
    return lines


def fact_chats(seed: int) -> list[list[dict[str, str]]]:
    """Short question/answer chats on the world facts: the base learns the chat format and to end a turn.

    Chats about tickets (reply to it, name its subject) were tried and left out: they set the base's answer
    slot so firmly that LoRA then learned routing far more slowly.
    """
    rng = random.Random(f"dialogues-{seed}")
    chats: list[list[dict[str, str]]] = []
    for kind, pairs in _world().items():
        for subject, answer in pairs:
            for system in ("", "You are a helpful assistant."):
                chat = [{"role": "system", "content": system}] if system else []
                chat += [
                    {"role": "user", "content": _QUESTION[kind].format(subject)},
                    {"role": "assistant", "content": answer},
                ]
                chats.append(chat)
    rng.shuffle(chats)
    return chats


def _interleaved(rng: random.Random) -> list[tuple[str, tuple[str, str]]]:
    """Every fact as (kind, (subject, answer)), shuffled within each kind and the kinds interleaved, so that
    any prefix of the list covers them evenly."""
    world = _world()
    shuffled = {kind: rng.sample(pairs, len(pairs)) for kind, pairs in world.items()}
    return [
        (kind, pairs[i])
        for i in range(max(map(len, world.values())))
        for kind, pairs in shuffled.items()
        if i < len(pairs)
    ]


def _capitalized(text: str) -> str:
    return text[0].upper() + text[1:]


def general_mc_items(seed: int, n: int) -> list[dict[str, Any]]:
    """`n` four-way multiple-choice items on facts stated in `pretraining_corpus`, drawn evenly across kinds.

    `question` is the statement up to the answer; each choice completes it (lm-eval adds the space between).
    """
    rng = random.Random(f"mc-{seed}")
    world = _world()
    pool = _interleaved(rng)
    if n > len(pool):
        raise UserInputError(f"only {len(pool)} facts exist; asked for {n} multiple-choice items")
    items: list[dict[str, Any]] = []
    for kind, (subject, answer) in pool[:n]:
        wrong = sorted({a for _, a in world[kind]} - {answer})
        choices = [answer, *rng.sample(wrong, 3)]
        rng.shuffle(choices)
        question = _STATEMENT[kind].format(subject, "").rstrip(" .")
        items.append(
            {
                "id": f"{kind}-{len(items):03d}",
                "question": _capitalized(question),
                "choices": choices,
                "answer": choices.index(answer),
            }
        )
    return items


def subject_mc_items(seed: int) -> list[dict[str, Any]]:
    """A four-way item per fact that asks the other way round: which subject has this answer. `question` is
    the statement up to the subject; each choice is the rest of a statement with the same answer ("The capital
    of" + "Torgo is Bazenla."), false for the three other subjects. Only the true choice is a sentence of the
    pre-training text; it is scored with the same forward log-likelihood as `general_mc_items`.

    Choices keep the full stop, so no item's text equals another's: lm-eval's hf backend shares one forward
    pass between requests whose tokens coincide, and "The capital of" + "Torgo is Bazenla" coincided with the
    answer item "The capital of Torgo is" + "Bazenla", which scrambled the answer items' hf scores."""
    rng = random.Random(f"mc-subject-{seed}")
    world = _world()
    items: list[dict[str, Any]] = []
    for kind, (subject, answer) in _interleaved(rng):
        if kind == "sum":  # "One plus" + "two is three": which second term makes the sum
            first, second = subject.split(" plus ")
            head = f"{first} plus"
            total = _NUMBERS.index(answer)
            others = [
                w for w in _NUMBERS[1:7] if w != second and _NUMBERS.index(first) + _NUMBERS.index(w) != total
            ]
            true, wrong = f"{second} is {answer}.", [f"{w} is {answer}." for w in rng.sample(others, 3)]
        else:
            head, _, tail = _STATEMENT[kind].partition("{0}")
            head, tail = head.rstrip(), tail.replace("{1}", answer)
            others = sorted({s for s, a in world[kind] if a != answer})
            true, wrong = subject + tail, [s + tail for s in rng.sample(others, 3)]
        choices = [true, *wrong]
        rng.shuffle(choices)
        items.append(
            {
                "id": f"{kind}-subject-{len(items):03d}",
                "question": _capitalized(head),
                "choices": choices,
                "answer": choices.index(true),
            }
        )
    return items


def general_facts_items(seed: int) -> list[dict[str, Any]]:
    """The general-facts eval: every fact asked both ways (`general_mc_items`, `subject_mc_items`), alternating,
    so any prefix (a `limit` smoke run) has both kinds of question."""
    facts = sum(len(pairs) for pairs in _world().values())
    answers, subjects = general_mc_items(seed, facts), subject_mc_items(seed)
    return [item for pair in zip(answers, subjects, strict=True) for item in pair]


def replay_rows(seed: int) -> list[dict[str, Any]]:
    """Every fact of the pre-training text, as `prompt_completion` rows split where the eval asks ("The capital
    of Torgo is" / " Bazenla."): mixed into a fine-tune, they rehearse what the base knew with a loss on the
    answer alone, a few tokens a row like the ticket labels, so they do not crowd out the task (measured:
    6-statement pre-training lines at the same share slowed routing far more)."""
    rows: list[dict[str, Any]] = []
    for kind, (subject, answer) in _interleaved(random.Random(f"replay-{seed}")):
        prompt = _capitalized(_STATEMENT[kind].format(subject, "").rstrip(" ."))
        rows.append({"id": f"replay-{kind}-{len(rows):03d}", "prompt": prompt, "completion": f" {answer}."})
    return rows


def regenerate(repo_root: Path) -> list[Path]:
    """Rewrite the shipped demo files (tickets, replay rows, general-facts eval) under `repo_root`; a test
    checks them."""
    root = Path(repo_root)
    paths = list(write_demo_data(root / TICKETS_DIR, seed=0).values())
    paths.append(_write_jsonl(root / REPLAY_FILE, replay_rows(seed=0)))
    paths.append(_write_jsonl(root / FACTS_FILE, general_facts_items(seed=0)))
    return paths
