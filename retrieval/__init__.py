"""DeepRec's traditional recommender (TRM): ``model`` (TRM, MoE adaptor, config), ``retriever`` (batched in-process
retrieval), ``training`` (the training pieces), ``text`` (item and preference texts).

    from retrieval.retriever import TRMRetriever
    retriever = TRMRetriever.load("results/trm/ml100k", encoder=load_text_encoder())
    ids, scores = retriever.retrieve(histories, preference_texts, k=20)

`train_trm.py` trains one and writes such a folder; `evaluation.recommenders.TRMRecommender` scores it alone.
Imports flow one way: evaluation/ imports retrieval/, never the reverse.
"""
