"""DeepRec's traditional recommender (TRM): model, in-process retrieval, training pieces, seam recommender.

    from retrieval import TRMRetriever, TRMRecommender
    retriever = TRMRetriever.load("results/trm/ml100k", encoder=load_text_encoder())
    ids, scores = retriever.retrieve(histories, preference_texts, k=20)

`train_trm.py` trains one and writes such a folder.
"""
from retrieval.model import TRM, MoEAdaptor, TRMConfig
from retrieval.recommender import TRMRecommender
from retrieval.retriever import TRMRetriever

__all__ = ["TRM", "MoEAdaptor", "TRMConfig", "TRMRecommender", "TRMRetriever"]
