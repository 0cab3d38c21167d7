"""Browser faces for end users: the widget script, the preference page, unsubscribe pages.

Templates are herald's own (Jinja2 with autoescape), never the user-template sandbox; every
asset ships in the package (nothing from a CDN).
"""
