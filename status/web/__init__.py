"""``loopfree ui``: a read-only web view of submissions, their images and the workers.

``app`` (routes and the app factory), ``views`` (what each page shows, shared by HTML and JSON),
``security`` (read-only, token, headers), ``thumbs`` (the thumbnail cache), ``templates/``.
"""
