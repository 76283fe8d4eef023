"""Where a snapshot is computed: ``local`` (chunks of customers on threads, the default) or
``spark`` (buckets of customers with ``applyInPandas``; pyspark is imported only when used)."""
