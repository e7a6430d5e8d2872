"""Assistant masks derived by rendering prefixes (data.chat_masks) against the markers-based masks of templates that
have {% generation %} markers, and the training text against what the published template renders at inference."""
import numpy as np
import pytest

import sambay_model  # noqa: F401  (registers phi4flash: the snapshot's auto_map then needs no remote code)
from data.chat_data import chat_example
from data.chat_masks import TemplateNotPrefixStableError, assistant_mask
from data.chat_template import CHAT_TEMPLATE
from data.tokenizer import load_tokenizer
from tests.data import builders
from tests.train.hub_snapshot import PUBLISHED_CHAT_TEMPLATE, write_tokenizer

# The published template with markers around each assistant message's content and end of turn: the same text.
MARKED_PUBLISHED = PUBLISHED_CHAT_TEMPLATE.replace(
    "{% else %}{{ '<|' + message['role']",
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' }}{% generation %}"
    "{{ message['content'] + '<|end|>' }}{% endgeneration %}{% else %}{{ '<|' + message['role']", 1)

CONVERSATIONS = [*builders.CONVERSATIONS,
                 [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]]  # an empty answer ends its turn


@pytest.fixture(scope="module")
def hub_tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubtok")
    write_tokenizer(root)
    return load_tokenizer(root)


def markers_mask(tok, messages, template):
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  chat_template=template)
    return enc["input_ids"], enc["assistant_masks"]


def test_marked_variant_renders_the_published_text(hub_tok):
    for m in CONVERSATIONS:
        assert (hub_tok.apply_chat_template(m, tokenize=False, chat_template=MARKED_PUBLISHED)
                == hub_tok.apply_chat_template(m, tokenize=False))


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_derived_masks_equal_markers_masks_on_the_published_template(hub_tok, conversation):
    turns = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    ids, mask = assistant_mask(hub_tok, conversation, turns, "t")
    ref_ids, ref_mask = markers_mask(hub_tok, conversation, MARKED_PUBLISHED)
    assert ids.tolist() == ref_ids and mask.tolist() == ref_mask and mask.any()
    # The conversation's closing <|endoftext|> (published template, no generation prompt) is not trained.
    assert hub_tok.convert_ids_to_tokens(int(ids[-1])) == "<|endoftext|>" and mask[-1] == 0


def test_derived_masks_equal_markers_masks_on_the_project_template(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert tok.chat_template == CHAT_TEMPLATE
    for m in CONVERSATIONS:
        turns = [i for i, x in enumerate(m) if x["role"] == "assistant"]
        ids, mask = assistant_mask(tok, m, turns, "t")
        assert (ids.tolist(), mask.tolist()) == tuple(markers_mask(tok, m, CHAT_TEMPLATE))


def test_training_text_is_the_inference_prompt_then_the_completion(hub_tok):
    ex = chat_example({"prompt": [{"role": "system", "content": "Be terse."},
                                  {"role": "user", "content": "what is 2 plus 5?"}],
                       "completion": "The answer is 7."}, "rec")
    ids, mask = assistant_mask(hub_tok, ex.messages, ex.train_turns, ex.where)
    text = hub_tok.decode(ids.tolist())
    prompt = hub_tok.apply_chat_template(ex.messages[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and text[len(prompt):].startswith("The answer is 7.<|end|>")
    assert hub_tok.decode(ids[mask == 1].tolist()) == "The answer is 7.<|end|>"
    assert ids[:int(np.argmax(mask))].tolist() == hub_tok.apply_chat_template(
        ex.messages[:2], add_generation_prompt=True, return_dict=True)["input_ids"]


def test_only_the_completion_is_trained(hub_tok):
    ex = chat_example({"prompt": [{"role": "user", "content": "2 plus 2?"}, {"role": "assistant", "content": "4"},
                                  {"role": "user", "content": "3 plus 3?"}],
                       "completion": [{"role": "assistant", "content": "6"}]}, "rec")
    assert ex.train_turns == (3,)
    ids, mask = assistant_mask(hub_tok, ex.messages, ex.train_turns, ex.where)
    assert hub_tok.decode(ids[mask == 1].tolist()) == "6<|end|>"


def test_a_template_that_is_not_prefix_stable_is_an_error_naming_the_record(hub_tok):
    # Earlier assistant turns rendered differently from the last one (as templates that strip reasoning do).
    unstable = PUBLISHED_CHAT_TEMPLATE.replace(
        "message['content'] + '<|end|>' }}{% endif %}",
        "(message['content'] if loop.last or message['role'] != 'assistant' else 'x') + '<|end|>' }}{% endif %}")
    hub_tok.chat_template = unstable
    try:
        with pytest.raises(TemplateNotPrefixStableError, match="chats.jsonl: record 4.*not prefix-stable at message 2"):
            assistant_mask(hub_tok, CONVERSATIONS[1], [2, 4], "chats.jsonl: record 4")
    finally:
        hub_tok.chat_template = PUBLISHED_CHAT_TEMPLATE


def test_a_first_assistant_turn_has_no_prompt(hub_tok):
    with pytest.raises(ValueError, match="rec: the conversation starts with an assistant message"):
        assistant_mask(hub_tok, [{"role": "assistant", "content": "hi"}], [0], "rec")
