"""``loopfree export``: a selection of jobs' images as a dataset that training code reads as it is.

Modules, one concern each:

- ``samples``      what one exported sample is: its key, image, and the record beside it
- ``plan``         what to export (submissions, filters, a snapshot time) and the jobs in order
- ``fetch``        images fetched in order with a bounded number of parallel requests
- ``writers``      one shard in each format: webdataset tar, Parquet file, imagefolder folder
- ``destination``  a local folder or an ``s3://`` prefix: staging, committing, small files
- ``state``        the progress file that makes an export resumable
- ``run``          the export itself: shards filled in order, committed, recorded
"""
