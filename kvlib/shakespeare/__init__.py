"""The small GPT-2 trained on Shakespeare that ships with kvlib: the corpus (`corpus`: fetch, clean, held-out
split, the shipped held-out ids and word list), training (`python -m kvlib.shakespeare.train`), its checkpoint
(`checkpoint`: history, loss curve, model card; the weights are in kvlib/data) and perplexity (`evaluate`).

May import: the library (kvlib.config, attention, cache, model); never kvlib.measure or kvlib.teaching.
"""
