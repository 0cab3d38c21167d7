"""The strings of the end-user pages, per language (add a language by adding a table).

The language is ``?lang=`` if given, else the user's stored locale, else the browser's
``Accept-Language``, else English; a missing string falls back to English.
"""

from __future__ import annotations

EN = {
    "prefs_title": "Notification preferences",
    "prefs_intro": "Choose how we may reach you.",
    "channels": "Channels",
    "channels_hint": "Turn a channel off to stop everything it carries (except what is required).",
    "categories": "What you receive",
    "category": "Category",
    "required": "required",
    "required_hint": "Required messages (such as security alerts) are always sent.",
    "save": "Save preferences",
    "saved": "Your preferences are saved.",
    "link_invalid": "This link is invalid or has expired. Ask for a new one.",
    "unsub_title": "Unsubscribe",
    "unsub_question": "Stop receiving “{category}” messages by {channel}?",
    "unsub_button": "Unsubscribe",
    "unsub_other": "Other messages are not affected.",
    "unsub_done_title": "You are unsubscribed",
    "unsub_done": "You will no longer receive “{category}” messages by {channel}.",
    "ch_email": "Email",
    "ch_sms": "SMS",
    "ch_push": "Push notifications",
    "ch_in_app": "In-app",
    "ch_webhook": "Webhook",
    "ch_chat": "Chat",
}

FR = {
    "prefs_title": "Préférences de notification",
    "prefs_intro": "Choisissez comment nous pouvons vous joindre.",
    "channels": "Canaux",
    "channels_hint": "Désactivez un canal pour arrêter tout ce qu'il transmet (sauf l'obligatoire).",
    "categories": "Ce que vous recevez",
    "category": "Catégorie",
    "required": "obligatoire",
    "required_hint": "Les messages obligatoires (comme les alertes de sécurité) sont toujours envoyés.",
    "save": "Enregistrer",
    "saved": "Vos préférences sont enregistrées.",
    "link_invalid": "Ce lien est invalide ou a expiré. Demandez-en un nouveau.",
    "unsub_title": "Se désabonner",
    "unsub_question": "Ne plus recevoir les messages « {category} » par {channel} ?",
    "unsub_button": "Me désabonner",
    "unsub_other": "Les autres messages ne changent pas.",
    "unsub_done_title": "Vous êtes désabonné",
    "unsub_done": "Vous ne recevrez plus les messages « {category} » par {channel}.",
    "ch_email": "E-mail",
    "ch_sms": "SMS",
    "ch_push": "Notifications push",
    "ch_in_app": "Dans l'application",
    "ch_webhook": "Webhook",
    "ch_chat": "Messagerie",
}

LANGUAGES: dict[str, dict[str, str]] = {"en": EN, "fr": FR}


def pick(explicit: str | None, user_locale: str | None, accept_language: str | None) -> str:
    candidates = [explicit, user_locale]
    for part in (accept_language or "").split(","):
        candidates.append(part.split(";")[0].strip())
    for c in candidates:
        if c:
            base = c.replace("_", "-").split("-")[0].lower()
            if base in LANGUAGES:
                return base
    return "en"


class Strings:
    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._table = LANGUAGES.get(lang, EN)

    def __call__(self, key: str, **values: str) -> str:
        text = self._table.get(key) or EN.get(key, key)
        return text.format(**values) if values else text

    def channel(self, name: str) -> str:
        return self(f"ch_{name}") if f"ch_{name}" in EN else name
