"""What WhatsApp writes in place of a message, in each app language, as data.

WhatsApp writes its placeholders and system lines in the language of the phone that
exported the chat, not of the people in it: a Chilean with an English iPhone exports
`image omitted`, a Brazilian friend's Android `<Mídia oculta>`. Each language is one
`Locale` below; `patterns()` turns the whole table into one regex per reason, so adding a
language is adding data, never code.

Strings are written as WhatsApp shows them, compared case-insensitively. In `group_events`,
`{n}` stands for a name (or a list of names) and `{…}` for any text to the end of the line;
everything else is literal. Sources: the wordings in other parsers' test suites and locale
tables (chat-analytics, WhatsR, whatsapp-chat-parser) and exports users posted in their
issue trackers. A wording not listed here makes the line a message; the clean report flags a
file that loses more than half of its units to one reason, and `clean.header_format` exists
for headers this module does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Locale:
    media_omitted: tuple[str, ...] = ()  # the whole text: <Media omitted>, image omitted…
    attached: tuple[str, ...] = ()  # Android `IMG-….jpg (file attached)`: the words in parentheses
    attached_ios: tuple[str, ...] = ()  # iOS `<attached: 00000012-PHOTO-….jpg>`: the word before the colon
    deleted: tuple[str, ...] = ()  # the whole text, by others and by me
    edited: tuple[str, ...] = ()  # `<This message was edited>` at the end of a message: removed, message kept
    waiting: tuple[str, ...] = ()  # a message the phone never received
    location: tuple[str, ...] = ()  # `location: https://maps…`: the word before the colon
    live_location: tuple[str, ...] = ()
    missed_call: tuple[str, ...] = ()  # the start of the text
    view_once: tuple[str, ...] = ()
    poll: tuple[str, ...] = ()  # `POLL:` on a line of its own, then the question and options
    contact_card: tuple[str, ...] = ()
    encryption_notice: tuple[str, ...] = ()  # anywhere in the text
    security_code: tuple[str, ...] = ()  # anywhere in the text
    group_events: tuple[str, ...] = ()  # whole-text templates with {n} and {…}


LOCALES: dict[str, Locale] = {
    "es": Locale(
        media_omitted=(
            "<Multimedia omitido>",
            "<Archivo omitido>",
            "imagen omitida",
            "video omitido",
            "audio omitido",
            "sticker omitido",
            "GIF omitido",
            "documento omitido",
            "foto omitida",
        ),
        attached=("archivo adjunto",),
        attached_ios=("adjunto",),
        deleted=("Se eliminó este mensaje", "Eliminaste este mensaje", "Este mensaje fue eliminado"),
        edited=("Se editó este mensaje",),
        waiting=("Esperando este mensaje. Esto puede tomar tiempo", "Esperando el mensaje"),
        location=("ubicación",),
        live_location=("Ubicación en tiempo real compartida",),
        missed_call=("Llamada perdida", "Videollamada perdida", "Llamada de voz perdida", "Llamada grupal perdida"),
        view_once=("Foto de visualización única", "Video de visualización única"),
        poll=("ENCUESTA",),
        contact_card=("tarjeta de contacto omitida",),
        encryption_notice=("cifrados de extremo a extremo",),
        security_code=("código de seguridad",),
        group_events=(
            "{n} creó el grupo {…}",
            "{n} creó este grupo",
            "Creaste el grupo {…}",
            "{n} cambió el asunto {…}",
            "Cambiaste el asunto {…}",
            "{n} cambió la descripción del grupo",
            "{n} cambió el ícono de este grupo",
            "{n} cambió la imagen del grupo",
            "{n} eliminó el ícono de este grupo",
            "{n} añadió a {n}",
            "{n} te añadió",
            "Añadiste a {n}",
            "{n} se unió usando el enlace de invitación de este grupo",
            "{n} se unió usando un enlace de invitación {…}",
            "Te uniste usando el enlace de invitación de este grupo",
            "{n} se unió",
            "{n} salió",
            "Saliste",
            "{n} eliminó a {n}",
            "{n} te eliminó",
            "Eliminaste a {n}",
            "{n} ahora es admin del grupo",
            "{n} ahora es admin",
            "Ahora eres admin del grupo",
            "{n} ya no es admin",
            "{n} cambió su número de teléfono {…}",
            "{n} cambió a {n}",
            "{n} activó los mensajes temporales {…}",
            "{n} desactivó los mensajes temporales.",
            "{n} fijó un mensaje",
        ),
    ),
    "en": Locale(
        media_omitted=(
            "<Media omitted>",
            "image omitted",
            "video omitted",
            "audio omitted",
            "sticker omitted",
            "GIF omitted",
            "document omitted",
            "video note omitted",
        ),
        attached=("file attached",),
        attached_ios=("attached",),
        deleted=("This message was deleted", "You deleted this message"),
        edited=("This message was edited",),
        waiting=("Waiting for this message. This may take a while", "Waiting for this message"),
        location=("location",),
        live_location=("Live location shared",),
        missed_call=("Missed voice call", "Missed video call", "Missed group voice call", "Missed group video call"),
        view_once=("View once photo", "View once video", "View once voice message"),
        poll=("POLL",),
        contact_card=("Contact card omitted",),
        encryption_notice=("end-to-end encrypted",),
        security_code=("security code",),
        group_events=(
            "{n} created group {…}",
            "{n} created this group",
            "You created group {…}",
            "{n} changed the subject {…}",
            "{n} changed the group name {…}",
            "You changed the subject {…}",
            "{n} changed this group's icon",
            "{n} deleted this group's icon",
            "{n} changed the group description",
            "{n} added {n}",
            "{n} added you",
            "You added {n}",
            "You were added",
            "{n} joined using this group's invite link",
            "{n} joined using an invite link {…}",
            "You joined using this group's invite link",
            "{n} joined",
            "{n} left",
            "You left",
            "{n} removed {n}",
            "{n} removed you",
            "You removed {n}",
            "{n} is now an admin",
            "You're now an admin",
            "{n} is no longer an admin",
            "{n} changed their phone number {…}",
            "{n} changed to {n}",
            "{n} turned on disappearing messages{…}",
            "{n} turned off disappearing messages.",
            "{n} pinned a message",
        ),
    ),
    "pt": Locale(  # Brazil and Portugal
        media_omitted=(
            "<Mídia oculta>",
            "<Mídia omitida>",
            "<Multimédia omitida>",
            "<ficheiro não revelado>",
            "<arquivo de mídia oculto>",
            "imagem ocultada",
            "imagem omitida",
            "vídeo omitido",
            "áudio ocultado",
            "áudio omitido",
            "figurinha omitida",
            "sticker omitido",
            "GIF omitido",
            "documento omitido",
        ),
        attached=("arquivo anexado", "ficheiro anexado"),
        attached_ios=("anexado", "anexo"),
        deleted=(
            "Mensagem apagada",
            "Esta mensagem foi apagada",
            "Você apagou esta mensagem",
            "Esta mensagem foi eliminada",
            "Eliminou esta mensagem",
            "Apagou esta mensagem",
        ),
        edited=("Mensagem editada", "Esta mensagem foi editada"),
        waiting=("Aguardando mensagem. Isso pode levar algum tempo", "Aguardando mensagem", "A aguardar esta mensagem"),
        location=("localização",),
        live_location=("Localização em tempo real compartilhada", "Localização em tempo real partilhada"),
        missed_call=(
            "Chamada de voz perdida",
            "Chamada de vídeo perdida",
            "Chamada de voz não atendida",
            "Chamada de vídeo não atendida",
        ),
        view_once=("Foto de visualização única", "Vídeo de visualização única"),
        poll=("ENQUETE", "SONDAGEM"),
        contact_card=("cartão do contato omitido", "cartão de contacto omitido"),
        encryption_notice=("criptografia de ponta a ponta", "encriptação ponto a ponto", "encriptadas ponto a ponto"),
        security_code=("código de segurança",),
        group_events=(
            "{n} criou o grupo {…}",
            "Você criou o grupo {…}",
            "{n} mudou o assunto {…}",
            "{n} mudou o nome do grupo {…}",
            "{n} alterou o assunto {…}",
            "{n} mudou a imagem deste grupo",
            "{n} alterou a imagem deste grupo",
            "{n} apagou a imagem deste grupo",
            "{n} mudou a descrição do grupo",
            "{n} alterou a descrição do grupo",
            "{n} adicionou {n}",
            "{n} adicionou você",
            "Você adicionou {n}",
            "{n} entrou usando o link de convite deste grupo",
            "{n} entrou através do link de convite deste grupo",
            "{n} entrou",
            "{n} saiu",
            "Você saiu",
            "{n} removeu {n}",
            "{n} removeu você",
            "{n} agora é admin",
            "{n} é agora administrador",
            "{n} mudou seu número de telefone {…}",
            "{n} mudou para {n}",
            "{n} ativou as mensagens temporárias{…}",
        ),
    ),
    "fr": Locale(
        media_omitted=(
            "<Médias omis>",
            "<Fichier omis>",
            "image absente",
            "image omise",
            "vidéo absente",
            "vidéo omise",
            "audio omis",
            "sticker omis",
            "GIF retiré",
            "GIF omis",
            "document omis",
        ),
        attached=("fichier joint",),
        attached_ios=("pièce jointe", "joint"),
        deleted=("Ce message a été supprimé", "Vous avez supprimé ce message"),
        edited=("Ce message a été modifié",),
        waiting=("En attente de ce message. Cela peut prendre du temps", "En attente de ce message"),
        location=("position", "localisation"),
        live_location=("Position en direct partagée",),
        missed_call=("Appel vocal manqué", "Appel vidéo manqué", "Appel vocal de groupe manqué"),
        view_once=("Photo à vue unique", "Vidéo à vue unique"),
        poll=("SONDAGE",),
        contact_card=("Carte de contact omise", "fiche contact omise"),
        encryption_notice=("chiffrés de bout en bout",),
        security_code=("code de sécurité",),
        group_events=(
            "{n} a créé le groupe {…}",
            "Vous avez créé le groupe {…}",
            "{n} a modifié le sujet {…}",
            "{n} a changé le sujet {…}",
            "{n} a changé le nom du groupe {…}",
            "{n} a changé l'icône de ce groupe",
            "{n} a changé la photo du groupe",
            "{n} a supprimé l'icône de ce groupe",
            "{n} a modifié la description du groupe",
            "{n} a ajouté {n}",
            "{n} vous a ajouté",
            "Vous avez ajouté {n}",
            "{n} a rejoint ce groupe via le lien d'invitation",
            "{n} a rejoint en utilisant le lien d'invitation de ce groupe",
            "{n} a rejoint le groupe",
            "{n} est parti",
            "{n} est partie",
            "{n} a quitté le groupe",
            "Vous êtes parti",
            "{n} a retiré {n}",
            "{n} vous a retiré",
            "{n} est maintenant admin",
            "{n} est désormais administrateur",
            "{n} a changé de numéro {…}",
            "{n} a changé son numéro {…}",
            "{n} a activé les messages éphémères{…}",
        ),
    ),
    "it": Locale(
        media_omitted=(
            "<Media omessi>",
            "<Media omesso>",
            "immagine omessa",
            "video omesso",
            "audio omesso",
            "sticker omesso",
            "GIF omessa",
            "documento omesso",
        ),
        attached=("file allegato",),
        attached_ios=("allegato",),
        deleted=("Questo messaggio è stato eliminato", "Hai eliminato questo messaggio"),
        edited=("Questo messaggio è stato modificato",),
        waiting=("In attesa di questo messaggio. Potrebbe volerci un po' di tempo", "In attesa di questo messaggio"),
        location=("posizione",),
        live_location=("Posizione in tempo reale condivisa",),
        missed_call=("Chiamata vocale persa", "Videochiamata persa", "Chiamata persa"),
        view_once=("Foto visualizzabile una volta", "Video visualizzabile una volta"),
        poll=("SONDAGGIO",),
        contact_card=("scheda contatto omessa",),
        encryption_notice=("crittografia end-to-end", "crittografati end-to-end"),
        security_code=("codice di sicurezza",),
        group_events=(
            "{n} ha creato il gruppo {…}",
            "Hai creato il gruppo {…}",
            "{n} ha cambiato l'oggetto {…}",
            "{n} ha modificato l'oggetto {…}",
            "{n} ha cambiato il nome del gruppo {…}",
            "{n} ha cambiato l'immagine di questo gruppo",
            "{n} ha eliminato l'immagine di questo gruppo",
            "{n} ha modificato la descrizione del gruppo",
            "{n} ha aggiunto {n}",
            "{n} ti ha aggiunto",
            "Hai aggiunto {n}",
            "{n} si è unito tramite il link d'invito di questo gruppo",
            "{n} si è unito/a tramite il link d'invito di questo gruppo",
            "{n} è entrato usando il link di invito di questo gruppo",
            "{n} è uscito",
            "{n} è uscita",
            "{n} ha abbandonato il gruppo",
            "Sei uscito",
            "{n} ha rimosso {n}",
            "{n} ti ha rimosso",
            "{n} è ora un amministratore",
            "{n} ha cambiato il suo numero {…}",
            "{n} ha attivato i messaggi effimeri{…}",
        ),
    ),
    "de": Locale(
        media_omitted=(
            "<Medien ausgeschlossen>",
            "<Medien weggelassen>",
            "Bild weggelassen",
            "Video weggelassen",
            "Audio weggelassen",
            "Sticker weggelassen",
            "GIF weggelassen",
            "Dokument weggelassen",
        ),
        attached=("Datei angehängt",),
        attached_ios=("Anhang", "angehängt"),
        deleted=(
            "Diese Nachricht wurde gelöscht",
            "Du hast diese Nachricht gelöscht",
            "Sie haben diese Nachricht gelöscht",
        ),
        edited=("Diese Nachricht wurde bearbeitet",),
        waiting=("Warten auf diese Nachricht. Dies kann etwas dauern", "Warten auf diese Nachricht"),
        location=("Standort",),
        live_location=("Live-Standort wird geteilt", "Live-Standort geteilt"),
        missed_call=("Verpasster Sprachanruf", "Verpasster Videoanruf", "Verpasster Gruppen-Sprachanruf"),
        view_once=("Einmalansicht-Foto", "Einmalansicht-Video"),
        poll=("UMFRAGE",),
        contact_card=("Kontaktkarte ausgelassen", "Kontaktkarte weggelassen"),
        encryption_notice=("Ende-zu-Ende-verschlüsselt", "Ende-zu-Ende-Verschlüsselung"),
        security_code=("Sicherheitsnummer", "Sicherheitscode"),
        group_events=(
            "{n} hat die Gruppe {…} erstellt",
            "{n} hat diese Gruppe erstellt",
            "Du hast die Gruppe {…} erstellt",
            "{n} hat den Betreff {…}",
            "{n} hat den Gruppennamen {…}",
            "{n} hat das Gruppenbild geändert",
            "{n} hat das Gruppenbild gelöscht",
            "{n} hat die Gruppenbeschreibung geändert",
            "{n} hat {n} hinzugefügt",
            "{n} hat dich hinzugefügt",
            "Du hast {n} hinzugefügt",
            "{n} ist über den Einladungslink dieser Gruppe beigetreten",
            "{n} ist der Gruppe beigetreten",
            "{n} hat die Gruppe verlassen",
            "Du hast die Gruppe verlassen",
            "{n} hat {n} entfernt",
            "{n} hat dich entfernt",
            "{n} ist jetzt Admin",
            "{n} ist jetzt ein Admin",
            "{n} hat die Telefonnummer {…}",
            "{n} hat zu {n} gewechselt",
            "{n} hat selbstlöschende Nachrichten aktiviert{…}",
        ),
    ),
    "nl": Locale(
        media_omitted=(
            "<Media weggelaten>",
            "afbeelding weggelaten",
            "video weggelaten",
            "audio weggelaten",
            "sticker weggelaten",
            "GIF weggelaten",
            "document weggelaten",
        ),
        attached=("bestand bijgevoegd",),
        attached_ios=("bijgevoegd",),
        deleted=("Dit bericht is verwijderd", "Je hebt dit bericht verwijderd", "U hebt dit bericht verwijderd"),
        edited=("Dit bericht is bewerkt",),
        waiting=("Wachten op dit bericht. Dit kan even duren", "Wachten op dit bericht"),
        location=("locatie",),
        live_location=("Live locatie gedeeld",),
        missed_call=("Gemiste spraakoproep", "Gemiste video-oproep", "Gemiste groepsspraakoproep"),
        view_once=("Eenmalig bekijken-foto", "Eenmalig bekijken-video"),
        poll=("PEILING",),
        contact_card=("Contactkaart weggelaten",),
        encryption_notice=("end-to-end versleuteld",),
        security_code=("beveiligingscode",),
        group_events=(
            "{n} heeft groep {…} aangemaakt",
            "{n} heeft deze groep aangemaakt",
            "{n} heeft het onderwerp {…}",
            "{n} heeft de groepsnaam {…}",
            "{n} heeft het groepsicoon gewijzigd",
            "{n} heeft de groepsafbeelding gewijzigd",
            "{n} heeft de groepsbeschrijving gewijzigd",
            "{n} heeft {n} toegevoegd",
            "{n} heeft je toegevoegd",
            "Je hebt {n} toegevoegd",
            "{n} neemt deel via de uitnodigingslink van deze groep",
            "{n} is lid geworden via de uitnodigingslink van deze groep",
            "{n} heeft de groep verlaten",
            "{n} is vertrokken",
            "Je hebt de groep verlaten",
            "{n} heeft {n} verwijderd",
            "{n} heeft je verwijderd",
            "{n} is nu beheerder",
            "{n} heeft zijn telefoonnummer {…}",
        ),
    ),
    "ca": Locale(
        media_omitted=(
            "<Multimèdia omès>",
            "<fitxers multimèdia omesos>",
            "<Mitjans omesos>",
            "imatge omesa",
            "vídeo omès",
            "àudio omès",
            "adhesiu omès",
            "document omès",
        ),
        attached=("fitxer adjunt",),
        attached_ios=("adjunt",),
        deleted=("S'ha suprimit aquest missatge", "Has suprimit aquest missatge", "Aquest missatge s'ha suprimit"),
        edited=("S'ha editat aquest missatge",),
        location=("ubicació",),
        live_location=("Ubicació en temps real compartida",),
        missed_call=("Trucada de veu perduda", "Videotrucada perduda", "Trucada perduda"),
        poll=("ENQUESTA",),
        contact_card=("targeta de contacte omesa",),
        encryption_notice=("xifrats d'extrem a extrem",),
        security_code=("codi de seguretat",),
        group_events=(
            "{n} ha creat el grup {…}",
            "{n} ha canviat l'assumpte {…}",
            "{n} ha canviat la icona d'aquest grup",
            "{n} ha canviat la descripció del grup",
            "{n} ha afegit {n}",
            "{n} t'ha afegit",
            "{n} s'ha unit mitjançant l'enllaç d'invitació d'aquest grup",
            "{n} ha sortit",
            "{n} ha eliminat {n}",
            "{n} ara és admin",
        ),
    ),
    "cs": Locale(
        media_omitted=("<Média vynechána>", "<média vynechány>", "obrázek vynechán", "video vynecháno"),
        attached=("soubor připojen", "soubor byl přiložen"),
        attached_ios=("příloha",),
        deleted=(
            "Tato zpráva byla smazána",
            "Smazali jste tuto zprávu",
            "Tato zpráva byla odstraněna",
            "Tuto zprávu jste odstranil/a",
            "Tuto zprávu jste odstranil",
            "Tuto zprávu jste odstranila",
        ),
        edited=("Tato zpráva byla upravena",),
        location=("poloha",),
        live_location=("Sdílení polohy živě",),
        missed_call=("Zmeškaný hlasový hovor", "Zmeškaný videohovor", "Zmeškaný hovor"),
        poll=("ANKETA",),
        encryption_notice=("koncovým šifrováním",),
        security_code=("bezpečnostní kód",),
        group_events=(
            "{n} vytvořil(a) skupinu {…}",
            "{n} přidal(a) {n}",
            "{n} odešel",
            "{n} odešla",
            "{n} odebral(a) {n}",
            "{n} změnil(a) předmět {…}",
        ),
    ),
    "ru": Locale(
        media_omitted=("<Без медиафайлов>", "<Файл пропущен>", "изображение отсутствует", "видео отсутствует"),
        attached=("файл добавлен", "файл прикреплен"),
        attached_ios=("прикреплено", "вложение"),
        deleted=("Данное сообщение удалено", "Это сообщение удалено", "Вы удалили данное сообщение"),
        edited=("Сообщение изменено",),
        location=("местоположение", "геопозиция"),
        live_location=("Геоданные в реальном времени",),
        missed_call=("Пропущенный аудиозвонок", "Пропущенный видеозвонок"),
        poll=("ОПРОС",),
        encryption_notice=("сквозным шифрованием",),
        security_code=("код безопасности",),
        group_events=(
            "{n} создал(а) группу {…}",
            "{n} создал группу {…}",
            "{n} добавил(а) {n}",
            "{n} добавил {n}",
            "{n} вышел(-а)",
            "{n} вышел(а)",
            "{n} вышел",
            "{n} вышла",
            "{n} удалил(а) {n}",
            "{n} изменил(а) тему {…}",
            "{n} изменил(а) изображение группы",
            "{n} изменил(а) описание группы",
            "{n} присоединился(-ась) к группе по ссылке-приглашению",
        ),
    ),
    "ar": Locale(
        media_omitted=("<تم استبعاد الوسائط>", "تم استبعاد الصورة", "تم استبعاد الفيديو", "تم استبعاد الصوت"),
        attached=("ملف مرفق",),
        attached_ios=("مرفق",),
        deleted=("تم حذف هذه الرسالة", "لقد حذفت هذه الرسالة", "حذفت هذه الرسالة"),
        edited=("تم تعديل هذه الرسالة",),
        location=("الموقع",),
        live_location=("تمت مشاركة الموقع المباشر",),
        missed_call=("مكالمة صوتية فائتة", "مكالمة فيديو فائتة"),
        poll=("استطلاع",),
        encryption_notice=("مشفرة تمامًا", "التشفير التام", "مشفّرة بين الطرفين"),
        security_code=("رمز الأمان",),
        group_events=(
            "{n} أنشأ المجموعة {…}",
            "{n} أنشأ مجموعة {…}",
            "{n} أضاف {n}",
            "{n} أضافك",
            "{n} غادر",
            "{n} غادرت",
            "{n} أزال {n}",
            "{n} غيّر الموضوع {…}",
            "{n} غير الموضوع {…}",
            "{n} غيّر صورة هذه المجموعة",
            "{n} غيّر وصف المجموعة",
            "{n} انضم باستخدام رابط الدعوة لهذه المجموعة",
        ),
    ),
}

# Android writes `null` for a view-once photo or video the exporting phone never opened, in every language.
VIEW_ONCE_EVERYWHERE = ("null",)
_NAME = r"[^\n]+?"
# A shared venue, in every language: `Name (Address): URL` on iOS; name, address and URL on three lines on Android.
_PLACE_URL = (
    r"https?://(?:foursquare\.com/v/|maps\.google\.[a-z.]+/|goo\.gl/maps/|maps\.app\.goo\.gl/|maps\.apple\.com/)\S*"
)
VENUE = rf"[^\n]+ \([^\n]+\): {_PLACE_URL}|[^\n]+\n[^\n]+\n{_PLACE_URL}"


def _alternation(kind: str, strip: str = "") -> str:
    """Every language's wordings of one kind, longest first so that a longer wording wins over its prefix."""
    words = {word.strip(strip) for locale in LOCALES.values() for word in getattr(locale, kind)}
    words = sorted(words, key=len, reverse=True)
    return "|".join(_literal(word) for word in words)


def _literal(text: str) -> str:
    """Escapes what the regex engine treats as syntax; `re.escape` also escapes spaces and quotes, which
    polars' engine rejects in some positions."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def _template(template: str) -> str:
    pieces = re.split(r"(\{n\}|\{…\})", template)
    return "".join(_NAME if p == "{n}" else r"[^\n]*" if p == "{…}" else _literal(p) for p in pieces)


def _stop(pattern: str) -> str:
    """A whole text, with the full stop WhatsApp writes in some versions and not in others."""
    return rf"(?i)^(?:{pattern})\.?$"


@dataclass(frozen=True)
class Patterns:
    media_line: str  # the first line of a message that is an attachment or a placeholder: removed, caption kept
    attachment_line: str  # ... of which: a file (not a placeholder)
    contact_file: str  # an attached contact card (.vcf)
    edited_mark: str
    content: list[tuple[str, str]]  # (reason, pattern) on the whole text of a message
    notices: list[tuple[str, str]]  # (reason, pattern) of system notices, whoever appears as author
    group_event: str  # whole-text group events

    @property
    def screen(self) -> str:
        """Any of the reasons but group events, as one regex: one pass over every message finds the few that need
        a closer look. (Group events stay apart: their name wildcards make a joint automaton explode in size.)"""
        parts = [self.media_line, self.edited_mark, *(p for _, p in self.content + self.notices)]
        return "|".join(f"(?:{part})" for part in parts)


def patterns() -> Patterns:
    """The table compiled to one regex per reason (built once per process: `PATTERNS`)."""
    omitted = _alternation("media_omitted", strip="<>")
    attached, attached_ios = _alternation("attached"), _alternation("attached_ios")
    file_name = r"[^\n]*?\.\w{1,5}"
    attachment = (
        # iOS: [name.pdf[ • 2 pages] ]<attached: 00000046-name.pdf>, with spaces inside the brackets in some versions
        rf"(?:{file_name}(?: • [^\n]*?)? )?<\s?(?:{attached_ios})\s?:\s?[^>\n]*>"
        rf"|{file_name} \((?:{attached})\)"  # Android: IMG-….jpg (file attached)
        rf"|{file_name} <(?:{attached_ios})>"  # old iOS: 2015-08-04-PHOTO-00004762.jpg <attached>
    )
    placeholder = rf"(?:{file_name}(?: • [^\n]*)? )?<?(?:{omitted})>?"  # iOS: name.pdf • 2 pages document omitted
    return Patterns(
        media_line=rf"(?i)^\s*(?:{attachment}|{placeholder})[ \t]*(?:\n|$)",
        attachment_line=rf"(?i)^\s*(?:{attachment})",
        contact_file=rf"(?i)^\s*[^\n]*?\.vcf(?: \((?:{attached})\)| <|>|$)",
        edited_mark=rf"(?i)\s*<(?:{_alternation('edited')})\.?>\s*$",
        content=[
            ("deleted", _stop(_alternation("deleted"))),
            ("waiting", _stop(_alternation("waiting"))),
            ("view_once", _stop("|".join([*VIEW_ONCE_EVERYWHERE, _alternation("view_once")]))),
            ("live_location", _stop(_alternation("live_location"))),
            ("location", rf"(?i)^(?:(?:{_alternation('location')})\s?:\s?https?://\S+|{VENUE})$"),
            ("contact_card", _stop(_alternation("contact_card"))),
            ("poll", rf"^(?:{_alternation('poll')})\s?:\n"),
            ("missed_call", rf"(?i)^(?:{_alternation('missed_call')})(?:[,.][^\n]*)?$"),
        ],
        notices=[
            ("encryption_notice", rf"(?i){_alternation('encryption_notice')}"),
            ("security_code", rf"(?i){_alternation('security_code')}"),
        ],
        group_event=rf"(?i)^(?:{'|'.join(_template(t) for loc in LOCALES.values() for t in loc.group_events)})\.?$",
    )


PATTERNS = patterns()
