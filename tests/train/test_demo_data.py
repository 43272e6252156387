from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lifecycle.train import demo_data
from lifecycle.train.demo_data import LABELS, SYSTEM_PROMPT

REPO = Path(__file__).parents[2]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tickets_are_seeded() -> None:
    assert demo_data.make_tickets(60, seed=3) == demo_data.make_tickets(60, seed=3)
    assert demo_data.make_tickets(60, seed=3) != demo_data.make_tickets(60, seed=4)


def test_rows_are_chat_messages_with_a_known_label() -> None:
    rows = demo_data.make_tickets(120, seed=0)
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"id", "messages"}
        system, user, assistant = row["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        assert system["content"] == SYSTEM_PROMPT
        assert user["content"].startswith("Subject: ")
        assert assistant["content"] in LABELS


def test_labels_are_balanced() -> None:
    counts = Counter(row["messages"][2]["content"] for row in demo_data.make_tickets(500, seed=0))
    assert set(counts) == set(LABELS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_eval_tickets_are_not_in_train(tmp_path: Path) -> None:
    paths = demo_data.write_demo_data(tmp_path, seed=1, n_train=300, n_eval=120)
    train, held_out = _read(paths["train"]), _read(paths["eval"])
    assert (len(train), len(held_out)) == (300, 120)
    assert not {r["messages"][1]["content"] for r in train} & {r["messages"][1]["content"] for r in held_out}
    assert not {r["id"] for r in train} & {r["id"] for r in held_out}


def test_shipped_files_equal_a_fresh_regeneration(tmp_path: Path) -> None:
    for path in demo_data.regenerate(tmp_path):
        shipped = REPO / path.relative_to(tmp_path)
        assert shipped.read_bytes() == path.read_bytes(), (
            f"{shipped} is stale: run demo_data.regenerate(repo_root)"
        )


def test_pretraining_corpus_knows_the_domain_but_not_the_task() -> None:
    corpus = demo_data.pretraining_corpus(seed=0)
    assert corpus == demo_data.pretraining_corpus(seed=0)
    text = "\n".join(corpus)
    assert "Subject: " in text and "The capital of " in text
    assert SYSTEM_PROMPT not in text
    assert not any(line.strip() in LABELS for line in text.splitlines())
    demo_tickets = {row["messages"][1]["content"] for row in demo_data.make_tickets(500, seed=0)}
    assert not demo_tickets & set(corpus)  # the base never reads the demo's train or eval tickets


def test_mc_items_ask_about_facts_stated_in_the_corpus() -> None:
    text = "\n".join(demo_data.pretraining_corpus(seed=0))
    items = demo_data.general_mc_items(seed=0, n=108)
    assert len({item["id"] for item in items}) == 108
    assert Counter(item["id"].split("-")[0] for item in items) == {
        "capital": 24,
        "color": 24,
        "sum": 36,
        "opposite": 24,
    }
    # a prefix covers the kinds evenly (and the first 96 are the items the eval shipped before it grew)
    assert Counter(item["id"].split("-")[0] for item in items[:96]) == dict.fromkeys(
        ("capital", "color", "sum", "opposite"), 24
    )
    for item in items:
        assert len(set(item["choices"])) == 4 and 0 <= item["answer"] < 4
        assert f"{item['question']} {item['choices'][item['answer']]}." in text
    # The right answer is not always in the same position.
    assert len({item["answer"] for item in items}) == 4


def test_fact_chats_are_short_chats() -> None:
    chats = demo_data.fact_chats(seed=0)
    assert chats == demo_data.fact_chats(seed=0)
    assert all(chat[-1]["role"] == "assistant" and " " not in chat[-1]["content"] for chat in chats)


def test_subject_items_ask_which_subject_a_stated_answer_belongs_to() -> None:
    text = "\n".join(demo_data.pretraining_corpus(seed=0))
    items = demo_data.subject_mc_items(seed=0)
    assert items == demo_data.subject_mc_items(seed=0) != demo_data.subject_mc_items(seed=1)
    assert Counter(item["id"].split("-")[0] for item in items) == {
        "capital": 24,
        "color": 24,
        "sum": 36,
        "opposite": 24,
    }
    for item in items:
        assert len(set(item["choices"])) == 4 and 0 <= item["answer"] < 4
        statements = [f"{item['question']} {choice}" for choice in item["choices"]]
        # the true choice completes a sentence of the pre-training text, the three others complete none
        assert [s in text for s in statements] == [k == item["answer"] for k in range(4)], statements
    assert len({item["answer"] for item in items}) == 4


def test_general_facts_asks_every_fact_both_ways_alternating() -> None:
    items = demo_data.general_facts_items(seed=0)
    assert len(items) == len({item["id"] for item in items}) == 216
    assert ["subject" in item["id"] for item in items[:6]] == [False, True] * 3
    assert items[0::2] == demo_data.general_mc_items(seed=0, n=108)
    assert items[1::2] == demo_data.subject_mc_items(seed=0)


def test_replay_rows_are_the_pre_training_facts_split_where_the_eval_asks() -> None:
    text = "\n".join(demo_data.pretraining_corpus(seed=0))
    rows = demo_data.replay_rows(seed=0)
    assert rows == demo_data.replay_rows(seed=0)
    assert len(rows) == len({row["id"] for row in rows}) == len({row["prompt"] for row in rows}) == 108
    for row in rows:
        assert set(row) == {"id", "prompt", "completion"}
        assert row["completion"].startswith(" ") and row["completion"].endswith(".")
        assert row["prompt"] + row["completion"] in text
    questions = {item["question"] for item in demo_data.general_mc_items(seed=0, n=108)}
    assert {row["prompt"] for row in rows} == questions  # the eval's questions, nothing more
    assert SYSTEM_PROMPT not in "".join(row["prompt"] for row in rows)  # no ticket routing in the replay


def test_general_facts_requests_that_share_a_forward_pass_have_the_same_question(tiny_base: Path) -> None:
    """lm-eval's hf backend runs one forward pass for all requests whose tokens coincide but for the last
    continuation token: meant for one question's one-token choices, and right for a distractor two items share.
    Across different questions it scrambled scores: "The capital of" + "Torgo is Bazenla" and "The capital of
    Torgo is" + "Bazenla" are the same tokens (so the subject choices keep the full stop)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    question: dict[tuple[int, ...], str] = {}
    for item in demo_data.general_facts_items(seed=0):
        for choice in item["choices"]:
            key = tuple(tokenizer(f"{item['question']} {choice}")["input_ids"][:-1])
            assert question.setdefault(key, item["question"]) == item["question"], (item["id"], choice)
