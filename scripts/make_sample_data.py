"""Write the bundled sample exports under data/raw/ (run once; the output is committed).

The sample is invented for the project: no real person's chats. It is built from
Chilean-Spanish phrase banks with a fixed seed so the file can be regenerated
byte for byte. The persona, Nico, writes in a marked Chilean register (po, cachai,
wena, al tiro, bacán, la raja, fome...), in bursts, with emojis; the other speakers
write a more neutral Spanish. That contrast is what the fine-tune should pick up.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

SEED = 20240611
ROOT = Path(__file__).resolve().parents[1] / "data" / "raw"

TOPICS = {
    "carrete": (
        [
            "¿Vas a ir a la fiesta del viernes?",
            "¿Qué tal estuvo la fiesta?",
            "¿A qué hora nos juntamos el sábado?",
            "¿Quién más va a ir?",
            "¿Llevo algo para tomar?",
            "¿Terminaste muy tarde anoche?",
        ],
        [
            "obvio que voy po, si el carrete va a estar la raja",
            "estuvo bacán, terminamos como a las 5 de la mañana",
            "juntémonos a las 10 en la casa del Pancho, cachai",
            "va la misma gallá de siempre po",
            "lleva unas chelas y un copete pa la previa",
            "quedé pa la cagá, ni me acuerdo cómo llegué a la casa",
            "filo, vamos igual aunque esté fome",
            "el Pancho puso puro reggaetón, nada que hacer",
        ],
    ),
    "pega": (
        [
            "¿Cómo te fue en el trabajo hoy?",
            "¿Te pagaron ya?",
            "¿Sigues buscando trabajo?",
            "¿Tu jefe te dio el día libre?",
            "¿A qué hora sales hoy?",
        ],
        [
            "la pega estuvo pesada, el jefe andaba choreado",
            "todavía no me pagan, ando sin ni una luca",
            "sí po, mandé como diez currículum esta semana",
            "ni cagando me da el día, es más pesado que la cresta",
            "salgo a las seis si no me piden otra wea",
            "me tienen haciendo planillas todo el día, qué lata",
        ],
    ),
    "futbol": (
        [
            "¿Viste el partido de anoche?",
            "¿Vamos al estadio el domingo?",
            "¿Quién crees que gana el clásico?",
            "¿Qué te pareció el gol del Colo?",
        ],
        [
            "sí po, el Colo jugó como las weas pero ganó igual",
            "vamos al tiro, compro las entradas hoy",
            "el Colo obvio, la U está pa la cagá este año",
            "golazo po, el arquero quedó parado como poste",
            "el árbitro era más malo que el pan con palta sin sal",
        ],
    ),
    "comida": (
        [
            "¿Qué vas a comer hoy?",
            "¿Conoces algún lugar bueno para almorzar?",
            "¿Cocinaste algo rico?",
            "¿Pedimos algo para la once?",
        ],
        [
            "unos completos italianos con harta mayo",
            "hay un local de sopaipillas al lado de la estación que es la raja",
            "hice una cazuela, me quedó filete",
            "pidamos unas empanadas de pino po",
            "ando con un hambre terrible, me comería un lomito",
        ],
    ),
    "transporte": (
        ["¿Ya llegaste?", "¿Cómo estaba el metro?", "¿Vienes en micro o en auto?", "¿Por qué llegas tan tarde?"],
        [
            "no po, la micro se demoró una eternidad",
            "el metro iba lleno, más apretado que la cresta",
            "en micro po, el auto está en panne",
            "estaba atochado el tráfico en la Alameda, nada que hacer",
            "voy al tiro, estoy a dos cuadras",
        ],
    ),
    "clima": (
        ["¿Está lloviendo por allá?", "¿Hace frío en Santiago?", "¿Viste el temblor de anoche?"],
        [
            "está cayendo un aguacero terrible",
            "hace un frío que cala los huesos, ando con tres chalecos",
            "sí po, se movió harto, pero nada grave",
            "puro smog y frío, lo típico de Santiago",
        ],
    ),
    "pololeo": (
        ["¿Cómo está tu polola?", "¿Sigues con la Vale?", "¿Qué le vas a regalar para el aniversario?"],
        [
            "bien po, anda pololeando conmigo todavía jaja",
            "sí po, estamos súper bien",
            "no cacho qué regalarle, ayúdame po",
            "le voy a hacer una once sorpresa, ojalá no sea muy fome",
        ],
    ),
    "estudios": (
        ["¿Estudiaste para la prueba?", "¿Cómo te fue en el examen?", "¿Entregaste el trabajo?"],
        [
            "nada po, voy a ir a puro cachar",
            "me fue como el forro, no sabía nada",
            "lo entregué a última hora, como siempre",
            "el profe es más pesado que la cresta, no le entiende nadie",
        ],
    ),
}

NICO_OPENERS = ["wena", "weeena", "oye", "ya po", "ya", "puta", "oe", "cachai que"]
NICO_CLOSERS = [" po", " cachai", " weón", " jajaja", " jaja", " 😂", " 🤙", " 🙌", "", "", ""]
NICO_SHORT = [
    "jajaja",
    "sipo",
    "ya po",
    "filo",
    "bacán",
    "la raja",
    "al tiro",
    "dale po",
    "nica",
    "de una",
    "😂😂😂",
    "🤙",
]
NICO_BURSTS = ["oye y otra cosa", "ah y no te olvidai de avisarme", "ya, hablamos", "igual tengo sueño", "me tinca"]
NICO_ASIDES = [
    "igual estoy medio raja",
    "no me pesqués mucho",
    "ando con una paja terrible",
    "me tinca caleta",
    "la wea buena",
    "no cacho na",
    "estoy chato",
    "qué fome igual",
    "ni ahí con eso",
    "es lo que hay no más",
    "me da lo mismo",
    "nos vemos al tiro",
    "avísame cualquier cosa",
    "pucha la wea",
    "está más bueno que el pan",
    "ando a full",
    "me quedé pegado",
    "tengo un sueño más o menos",
    "ya, cachai la onda",
    "andamos al peo",
    "hay que apechugar no más",
    "me cargó",
    "es harto fome",
    "quedó la embarrá",
    "anda a saber",
    "estoy en la U todavía",
    "ando en la micro",
    "pasé a comprar unas marraquetas",
    "se me cortó la luz",
    "me tinca ir a la playa",
    "el Pancho anda perdido",
    "la Vale te manda saludos",
    "me duele la guata",
    "ando sin batería",
    "está helado",
    "nica voy a llegar a la hora",
    "hoy día no",
    "mañana sí po",
    "de más",
    "qué penca",
]
FRIEND_SHORT = ["Jajaja", "Ok", "Perfecto", "Genial", "Dale", "Vale", "Qué bien", "Entiendo"]
GREETINGS_USER = ["Hola Nico", "Hola, ¿cómo estás?", "Buenas", "¿Qué tal?"]
GREETINGS_NICO = ["wena wena", "wena, ¿cómo estai?", "holi", "qué onda", "wena, todo bien por acá po"]
PII = [
    "mi número nuevo es +56 9 8765 4321",
    "escríbeme a nico.perez@correo.cl",
    "mira esto https://www.ejemplo.cl/noticia/123",
    "llámame al 9 8765 4321",
    "el link es www.tienda.cl/ofertas",
]
MEDIA_ANDROID = ["<Multimedia omitido>", "Se eliminó este mensaje.", "null"]


def nico_line(rng: random.Random, body: str) -> str:
    if rng.random() < 0.35:
        body = f"{rng.choice(NICO_OPENERS)} {body}"
    if rng.random() < 0.6:
        body = f"{body}, {rng.choice(NICO_ASIDES)}"
    return body + rng.choice(NICO_CLOSERS)


def conversation(rng: random.Random, friend: str, start: datetime) -> list[tuple[datetime, str, str]]:
    """One session: a greeting, a topic, a few exchanges. Returns (time, author, text)."""
    topic_user, topic_nico = TOPICS[rng.choice(sorted(TOPICS))]
    t = start
    out: list[tuple[datetime, str, str]] = []

    def say(author: str, text: str) -> None:
        nonlocal t
        t += timedelta(seconds=rng.randint(20, 400))
        out.append((t, author, text))

    if rng.random() < 0.6:
        say(friend, rng.choice(GREETINGS_USER))
        say("Nico", rng.choice(GREETINGS_NICO))
    for _ in range(rng.randint(2, 6)):
        say(friend, rng.choice(topic_user))
        say("Nico", nico_line(rng, rng.choice(topic_nico)))
        roll = rng.random()
        if roll < 0.25:
            say("Nico", nico_line(rng, rng.choice(NICO_BURSTS)))
        elif roll < 0.35:
            say("Nico", nico_line(rng, rng.choice(topic_nico)) + "\n" + nico_line(rng, rng.choice(topic_nico)))
        elif roll < 0.45:
            say("Nico", rng.choice(NICO_SHORT))
        if rng.random() < 0.3:
            say(friend, rng.choice(FRIEND_SHORT))
        if rng.random() < 0.04:
            say(rng.choice(["Nico", friend]), rng.choice(PII))
        if rng.random() < 0.05:
            say(rng.choice(["Nico", friend]), rng.choice(MEDIA_ANDROID))
    return out


def android_header(t: datetime) -> str:
    return f"{t.day}/{t.month}/{t.year % 100:02d}, {t.hour}:{t.minute:02d} - "


def write_android_chat(rng: random.Random, friend: str, n_sessions: int, path: Path) -> None:
    t = datetime(2023, 3, 1, 9, 0)
    lines = [
        f"{android_header(t)}Los mensajes y las llamadas están cifrados de extremo a extremo. "
        "Nadie fuera de este chat, ni siquiera WhatsApp, puede leerlos ni escucharlos. "
        "Toca para obtener más información."
    ]
    for _ in range(n_sessions):
        t += timedelta(hours=rng.randint(8, 60), minutes=rng.randint(0, 59))
        for when, author, text in conversation(rng, friend, t):
            lines.append(f"{android_header(when)}{author}: {text}")
            t = when
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_ios_group(rng: random.Random, n_sessions: int, path: Path) -> None:
    members = ["Cami", "Feña", "Pancho"]
    t = datetime(2023, 5, 2, 18, 30, 5)

    def header(when: datetime) -> str:
        return f"[{when.day}/{when.month}/{when.year % 100:02d}, {when.hour}:{when.minute:02d}:{when.second:02d}] "

    lines = [
        f"{header(t)}Los Cabros: \u200eLos mensajes y las llamadas están cifrados de extremo a extremo. "
        "Nadie fuera de este chat, ni siquiera WhatsApp, puede leerlos ni escucharlos.",
        f'{header(t)}Los Cabros: \u200eCami creó el grupo "Los Cabros"',
        f"{header(t)}Los Cabros: \u200eCami te añadió",
    ]
    for _ in range(n_sessions):
        t += timedelta(hours=rng.randint(10, 70), minutes=rng.randint(0, 59))
        friend = rng.choice(members)
        for when, author, text in conversation(rng, friend, t):
            if author != "Nico" and rng.random() < 0.3:
                author = rng.choice(members)
            if text == "<Multimedia omitido>":
                text = "\u200eimagen omitida"
            lines.append(
                f"\u200e{header(when)}{author}: {text}"
                if text.startswith("\u200e")
                else f"{header(when)}{author}: {text}"
            )
            t = when
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")


TRANSCRIPT = """\
Buenas noches Viña. Muchas gracias, muchas gracias. Oigan, qué lindo estar acá, de verdad.
Yo vengo llegando de Santiago, y ustedes saben lo que es viajar en bus a la costa un viernes.
El chofer manejaba como si lo viniera persiguiendo la PDI. Yo iba rezando el rosario completo.
Y al lado mío iba una señora con una bolsa de sopaipillas, y cada curva, una sopaipilla para el pasillo.
Llegamos todos aceitosos, pero felices. Eso es Chile, po. Sufrimos, pero con sopaipilla.
Ustedes se han fijado que en Chile nadie dice que no. Uno le pregunta a alguien: ¿vas a venir al cumpleaños?
Y te dicen: ya, veamos, puede ser, te aviso. Eso es un no. Eso es un no rotundo con cariño.
Y el chileno nunca llega a la hora. Si te dicen a las ocho, llegai a las diez, y eres el primero.
El dueño de casa todavía está en la ducha. Te abre la puerta en toalla. ¡Llegaste temprano, weón!
Mi mamá, por ejemplo, no sabe usar el WhatsApp. Me manda audios de siete minutos para decirme que hay cazuela.
Siete minutos, y los primeros cuatro son el ruido de la olla. Después dice: hijo, ¿me escuchai? ¿Está grabando?
Y termina con un mensaje que dice: te quiero, cuídate, abrígate. En pleno enero, con treinta grados.
Y el papá chileno, el papá chileno no pregunta cómo estai. El papá chileno pregunta: ¿y el auto cómo anda?
Esa es la forma de decir te quiero del papá chileno. ¿Le echaste aceite? ¿Revisaste las ruedas?
Oigan, y el metro de Santiago en la mañana. Uno entra soltero y sale pololeando, de lo apretado que va.
Yo una vez entré con un paraguas y salí con un bastón. Nadie sabe de quién era el bastón.
La gente en Chile es muy solidaria, eso sí. Si hay un terremoto, al otro día todos están ayudando.
Pero si hay un temblor chiquitito, grado cinco, el chileno ni se para del sillón. Sigue viendo la tele.
El extranjero sale corriendo a la calle en pijama, y el chileno le dice: tranquilo, compadre, esto no es nada.
Muchas gracias Viña, son un público maravilloso. ¡Buenas noches!
"""


def main() -> None:
    rng = random.Random(SEED)
    (ROOT / "whatsapp").mkdir(parents=True, exist_ok=True)
    (ROOT / "transcripts").mkdir(parents=True, exist_ok=True)
    write_android_chat(rng, "Cami", 260, ROOT / "whatsapp" / "Chat de WhatsApp con Cami.txt")
    write_android_chat(rng, "Feña", 160, ROOT / "whatsapp" / "Chat de WhatsApp con Feña.txt")
    write_ios_group(rng, 120, ROOT / "whatsapp" / "_chat.txt")
    (ROOT / "transcripts" / "rutina-vina.txt").write_text(TRANSCRIPT, encoding="utf-8")


if __name__ == "__main__":
    main()
