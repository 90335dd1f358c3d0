"""Template averaging and top-k against hand-made embeddings."""

import torch
import torch.nn.functional as F

from cliplab.zeroshot import class_embeddings, top_k


def test_class_embeddings_average_unit_prompt_embeddings_then_renormalise():
    prompts_seen = []

    def tokenizer(texts):
        prompts_seen.extend(texts)
        return torch.arange(len(texts))

    table = {  # prompt → raw embedding with different norms, so "normalise before averaging" matters
        "a cat.": torch.tensor([3.0, 0.0]), "the cat!": torch.tensor([0.0, 1.0]),
        "a dog.": torch.tensor([1.0, 1.0]), "the dog!": torch.tensor([0.0, 5.0]),
    }
    order = list(table)
    encode = lambda tok: torch.stack([table[order[i]] for i in tok.tolist()])
    w = class_embeddings(encode, tokenizer, ["cat", "dog"], ["a {}.", "the {}!"], batch_size=3)
    assert prompts_seen == order
    cat = F.normalize(torch.tensor([0.5, 0.5]), dim=0)
    dog = F.normalize((F.normalize(torch.tensor([1.0, 1.0]), dim=0) + torch.tensor([0.0, 1.0])) / 2, dim=0)
    torch.testing.assert_close(w, torch.stack([cat, dog]))


def test_top_k_orders_by_cosine():
    w = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    e = F.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0]]), dim=-1)
    idx, p, cos = top_k(e, w, k=2)
    assert idx.tolist() == [[0, 2], [1, 2]]
    assert torch.all(p[:, 0] >= p[:, 1]) and torch.all(p > 0)
    torch.testing.assert_close(cos, (e @ w.T).gather(1, idx))
    assert top_k(e, w, k=10)[0].shape == (2, 3)  # k capped at the number of classes
