"""The kopf operator for FeedPipeline and FeedModel resources (issue 7 builds it).

Nothing is implemented yet: the package exists so that the layout, packaging extra
(``feedserve[operator]``) and import path are fixed from the start.
"""
