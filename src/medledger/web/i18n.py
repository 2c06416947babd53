"""The pages in French and English: the language follows the browser (Accept-Language) unless
the person chose one with the switch in the header (a cookie).

Templates call `_("English text", name=value)`: the English text is the key, its placeholders
`{name}` are filled after translation. A text without a French translation shows in English
(a test checks that every text of the patient's pages has one)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

LANGUAGES = ("en", "fr")
COOKIE = "medledger_lang"

Translate = Callable[..., str]

FRENCH: dict[str, str] = {
    # -- layout and sign-in ------------------------------------------------------------------
    "Patient portal": "Portail patient",
    "Clinician": "Soignant",
    "Research": "Recherche",
    "Network explorer": "Explorateur du réseau",
    "My health records": "Mon dossier de santé",
    "Sign in": "Se connecter",
    "sign out": "se déconnecter",
    "Bearer token": "Jeton d'accès",
    "Language": "Langue",
    # -- the portal --------------------------------------------------------------------------
    "Your sign-in does not allow this (token scopes).": (
        "Votre connexion ne le permet pas (portée du jeton)."
    ),
    "Signed in as": "Connecté en tant que",
    "patient": "patient",
    "{age} years": "{age} ans",
    "Your records are held at:": "Vos données sont conservées par :",
    "{n} records": "{n} documents",
    "My records": "Mes données",
    "date": "date",
    "type": "type",
    "what": "quoi",
    "result": "résultat",
    "hospital": "hôpital",
    "hospital that acted or received": "hôpital qui a agi ou reçu",
    "normal {range}": "valeurs normales {range}",
    "high": "élevé",
    "low": "bas",
    "abnormal": "anormal",
    "not shown here: they stay sealed at {holder} until you let {here} see them (a consent below)": (
        "non affichées ici : elles restent scellées chez {holder} tant que vous ne les ouvrez "
        "pas à {here} (un consentement ci-dessous)"
    ),
    "nothing yet": "rien pour l'instant",
    "Who accessed my data": "Qui a consulté mes données",
    "From the ledger: every read, search or refusal, grouped by person and day, with why and "
    "on what grounds. Each line links the proofs of its entries, which you can check offline "
    "with": (
        "D'après le registre : chaque lecture, recherche ou refus, regroupés par personne et par "
        "jour, avec le motif et le fondement. Chaque ligne donne les preuves de ses entrées, que "
        "vous pouvez vérifier hors ligne avec"
    ),
    "all": "tous",
    "outcome": "décision",
    "granted": "accordé",
    "refused": "refusé",
    "Filter": "Filtrer",
    "day": "jour",
    "who": "qui",
    "why": "pourquoi",
    "on what grounds": "sur quel fondement",
    "served by": "servi par",
    "proof": "preuve",
    "block {height}": "bloc {height}",
    "nobody accessed your data yet": "personne n'a encore consulté vos données",
    "nothing matches this filter": "rien ne correspond à ce filtre",
    "served and signed by {orgs}": "servi et signé par {orgs}",
    "at the request signed by {orgs}": "à la demande signée par {orgs}",
    "sent to {orgs}": "envoyé à {orgs}",
    "you": "vous",
    "for your treatment": "pour vos soins",
    "in an emergency": "en urgence",
    "for research": "pour la recherche",
    "at your request": "à votre demande",
    "to export": "pour un export",
    "under your consent #{id} of {day}": "selon votre consentement n°{id} du {day}",
    "under your consent #{id}": "selon votre consentement n°{id}",
    "as the hospital that made the record": "en tant qu'hôpital auteur du document",
    "by emergency access #{id} (reviewed by the hospital's DPO)": (
        "par l'accès d'urgence n°{id} (revu par le DPO de l'hôpital)"
    ),
    "under referral #{id}": "selon l'adressage n°{id}",
    "for study {id}, which you joined": "pour l'étude {id}, à laquelle vous participez",
    "you, yourself": "vous-même",
    "refused: {reason}": "refusé : {reason}",
    # -- why an access was refused (contracts.access.DENIAL_REASONS) ---------------------------
    "the requester is not a known hospital or practitioner": (
        "le demandeur n'est ni un hôpital ni un soignant connu"
    ),
    "the practitioner or their hospital is no longer active": (
        "le soignant ou son hôpital n'est plus actif"
    ),
    "the request was malformed": "la demande était mal formée",
    "the practitioner's role does not allow it": "le rôle du soignant ne le permet pas",
    "your records there were erased": "vos données y ont été effacées",
    "no consent of yours covered it": "aucun de vos consentements ne le couvrait",
    "your consent had been revoked": "votre consentement avait été retiré",
    "your consent was suspended (contested)": "votre consentement était suspendu (contesté)",
    "your consent had expired": "votre consentement avait expiré",
    "your consent had not started yet": "votre consentement n'avait pas encore commencé",
    "your consent names another hospital": "votre consentement désigne un autre hôpital",
    "your consent is for another purpose": "votre consentement porte sur une autre finalité",
    "your consent does not cover this kind of record": (
        "votre consentement ne couvre pas ce type de données"
    ),
    "break-the-glass by someone without the emergency role": (
        "accès d'urgence par quelqu'un qui n'a pas le rôle urgence"
    ),
    "no emergency access was opened": "aucun accès d'urgence n'était ouvert",
    "the emergency access had expired": "l'accès d'urgence avait expiré",
    "the referral was cancelled": "l'adressage avait été annulé",
    "outside the referral's time window": "en dehors de la période de l'adressage",
    "you are not enrolled in that study": "vous ne participez pas à cette étude",
    "you withdrew from that study": "vous vous êtes retiré de cette étude",
    "the study is closed": "l'étude est close",
    "a consortium policy forbids it": "une règle du consortium l'interdit",
    "a consortium policy could not be evaluated (refused)": (
        "une règle du consortium n'a pas pu être évaluée (refusé)"
    ),
    "the sign-in was for another patient": "la connexion était celle d'un autre patient",
    "the hospital could not check the authorization (refused)": (
        "l'hôpital n'a pas pu vérifier l'autorisation (refusé)"
    ),
    "the authorization check failed (refused)": "la vérification de l'autorisation a échoué (refusé)",
    "the record's description could not be read (refused)": (
        "la description du document n'a pas pu être lue (refusé)"
    ),
    "read": "lecture",
    "searched": "recherche",
    "exported": "export",
    "wrote": "écriture",
    # -- consents, requests, studies, erasure --------------------------------------------------
    "Access requests": "Demandes d'accès",
    "when": "quand",
    "data": "données",
    "purpose": "finalité",
    "no request": "aucune demande",
    "Grant": "Accorder",
    "My consents": "Mes consentements",
    "who may see": "qui peut voir",
    "which data": "quelles données",
    "for": "pour",
    "period": "période",
    "status": "statut",
    "no consent": "aucun consentement",
    "Revoke": "Retirer",
    "Revoke consent {id}": "Retirer le consentement n°{id}",
    "Enrol study {id}": "Participer à l'étude {id}",
    "Withdraw study {id}": "Se retirer de l'étude {id}",
    "Let a hospital see my records": "Ouvrir mes données à un hôpital",
    "Hospital": "Hôpital",
    "my treatment": "mes soins",
    "research": "la recherche",
    "treatment": "soins",
    "emergency": "urgence",
    "until (optional)": "jusqu'au (facultatif)",
    "Which data (tick at least one)": "Quelles données (cochez-en au moins une)",
    "No data ticked": "Aucune donnée cochée",
    "Tick the data this hospital may see, or all my records: nothing was granted.": (
        "Cochez les données que cet hôpital peut voir, ou toutes mes données : rien n'a été "
        "accordé."
    ),
    "back": "retour",
    "Service unavailable": "Service indisponible",
    "Refused": "Refusé",
    "Research studies": "Études de recherche",
    "A study is research approved by an ethics committee. Enrolling lets it use your records, "
    "pseudonymised (without your name or identifiers), only in the categories it lists; the "
    "hospitals keep your data and release only what the study needs. You may withdraw at any "
    "time: later releases leave you out.": (
        "Une étude est une recherche approuvée par un comité d'éthique. Y participer lui permet "
        "d'utiliser vos données, pseudonymisées (sans votre nom ni vos identifiants), seulement "
        "dans les catégories qu'elle indique ; les hôpitaux gardent vos données et ne "
        "transmettent que ce dont l'étude a besoin. Vous pouvez vous retirer à tout moment : "
        "les transmissions suivantes vous excluent."
    ),
    "study": "étude",
    "title": "titre",
    "me": "moi",
    "enrolled": "je participe",
    "not enrolled": "je ne participe pas",
    "Enrol": "Participer",
    "Withdraw": "Se retirer",
    "no study open": "aucune étude ouverte",
    "ethics {ref}": "avis du comité d'éthique {ref}",
    "Erasure": "Effacement",
    "Request erasure": "Demander l'effacement",
    "Acts in my name": "Actes en mon nom",
    "no hospital acted in your name": "aucun hôpital n'a agi en votre nom",
    "how": "comment",
    "taken by": "recueilli par",
    "Hospitals holding my records": "Hôpitaux qui conservent mes données",
    "your records there since": "vos données y sont depuis",
    "no hospital holds your records": "aucun hôpital ne conserve vos données",
    "{n} more": "{n} de plus",
    # -- record types ------------------------------------------------------------------------
    "diagnosis": "diagnostic",
    "visit": "consultation",
    "report": "compte rendu",
    "prescription": "ordonnance",
    "medication": "traitement",
    "allergy": "allergie",
    "vaccination": "vaccination",
    "procedure": "acte",
    "identity": "identité",
    "document": "document",
    "consent": "consentement",
    # -- consent categories --------------------------------------------------------------------
    "all my records": "toutes mes données",
    "identity and contact details": "identité et coordonnées",
    "visits and stays": "consultations et séjours",
    "diagnoses and conditions": "diagnostics et pathologies",
    "allergies": "allergies",
    "medications": "médicaments",
    "vaccinations": "vaccinations",
    "laboratory results": "résultats de laboratoire",
    "vital signs (weight, blood pressure...)": "constantes (poids, tension...)",
    "other observations": "autres observations",
    "reports": "comptes rendus",
    "imaging": "imagerie",
    "procedures and operations": "actes et opérations",
    "care plans": "plans de soins",
    "documents": "documents",
    "administrative data": "données administratives",
    "anything else": "tout le reste",
    # -- statuses, erasure, acts in the patient's name -----------------------------------------
    "active": "en vigueur",
    "contested": "contesté",
    "revoked": "retiré",
    "expired": "expiré",
    "pending": "en attente",
    "open": "en cours",
    "done": "fait",
    "overdue": "en retard",
    "attested": "attesté",
    "cancelled": "annulé",
    "You may ask every hospital to erase your data. Care records under legal retention (20 "
    "years) are kept by the hospital that made them; copies held elsewhere are erased. Asked "
    "here, the request takes effect after {hours} hours, and the other hospitals that treat "
    "you are told.": (
        "Vous pouvez demander à chaque hôpital d'effacer vos données. Les dossiers de soins "
        "soumis à la durée légale de conservation (20 ans) restent chez l'hôpital qui les a "
        "créés ; les copies conservées ailleurs sont effacées. Demandée ici, la demande prend "
        "effet après {hours} heures, et les autres hôpitaux qui vous soignent en sont informés."
    ),
    "Request {id}, filed in your name by {org}: pending until {until}. Nothing is erased "
    "before then; if you did not ask for it, your own key or another hospital that treats you "
    "can cancel it.": (
        "Demande n°{id}, déposée en votre nom par {org} : en attente jusqu'au {until}. Rien "
        "n'est effacé d'ici là ; si vous ne l'avez pas demandée, votre propre clé ou un autre "
        "hôpital qui vous soigne peut l'annuler."
    ),
    "Request {id}:": "Demande n°{id} :",
    "{org} asked to replace your key: it takes effect at {until} unless your current key or "
    "another hospital that treats you cancels it.": (
        "{org} a demandé à remplacer votre clé : cela prend effet le {until}, sauf si votre clé "
        "actuelle ou un autre hôpital qui vous soigne l'annule."
    ),
    "granted a consent": "a accordé un consentement",
    "revoked a consent": "a retiré un consentement",
    "asked for erasure": "a demandé l'effacement",
    "replaced your key": "a remplacé votre clé",
    "enrolled you in a study": "vous a inscrit à une étude",
    "withdrew you from a study": "vous a retiré d'une étude",
    "through this portal": "par ce portail",
    "at the hospital's desk": "au guichet de l'hôpital",
}


def language(request: Request) -> str:
    """The page's language: the switch's cookie, else the browser's first known language."""
    chosen = request.cookies.get(COOKIE, "")
    if chosen in LANGUAGES:
        return chosen
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "en"


def translator(lang: str) -> Translate:
    """`_("text {x}", x=...)` in `lang`; English when no translation is known."""
    table = FRENCH if lang == "fr" else {}

    def translate(text: str, **values: object) -> str:
        found = table.get(text, text)
        if not values:
            return found
        # A placeholder's value that is itself one of the texts (a refusal's reason) too.
        shown = {k: table.get(v, v) if isinstance(v, str) else v for k, v in values.items()}
        return found.format(**shown)

    return translate
