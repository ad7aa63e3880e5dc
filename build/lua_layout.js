// A TypeScriptToLua plugin that lays out the generated Lua the way the
// OpenResty libraries read: 80 columns, blank lines between top-level
// definitions, the file's header comment first, `_` for skipped values. It only moves whitespace,
// and it fails the build when the output would not stand alone.
"use strict";

const ts = require("typescript");

const WIDTH = 80;

function diagnostic(file, message) {
    return {
        category: ts.DiagnosticCategory.Error,
        code: 0,
        file: undefined,
        start: undefined,
        length: undefined,
        messageText: `${file}: ${message}`,
        source: "lua_layout",
    };
}

// Places in `line` where it may break: after ", ", "(" and "{", and
// before " .. ";
// never inside a string literal.
function breakpoints(line) {
    const points = [];
    let quote = null;
    for (let i = 0; i < line.length; i++) {
        const c = line[i];
        if (quote) {
            if (c === "\\") i++;
            else if (c === quote) quote = null;
            continue;
        }
        if (c === '"' || c === "'") quote = c;
        else if (c === "-" && line[i + 1] === "-") break;
        else if (c === "," && line[i + 1] === " ") points.push(i + 1);
        else if ((c === "(" || c === "{") && !")}".includes(line[i + 1])) {
            points.push(i + 1);
        }
        else if (line.startsWith(" .. ", i)) points.push(i);
    }
    return points;
}

function wrap(line) {
    const indent = line.match(/^ */)[0] + "    ";
    const out = [];
    let rest = line;
    while (rest.length > WIDTH && !rest.trimStart().startsWith("--")) {
        const fits = breakpoints(rest).filter((p) => p <= WIDTH && p > indent.length);
        if (fits.length === 0) break;
        const at = fits[fits.length - 1];
        out.push(rest.slice(0, at).trimEnd());
        rest = indent + rest.slice(at).trimStart();
    }
    out.push(rest);
    return out;
}

function layout(code) {
    // TypeScriptToLua names a skipped value `____`; Lua's convention is `_`
    code = code.replace(/\b____\b/g, "_");
    let lines = code.split("\n").map((line) => line.trimEnd());

    // the header comment goes above `local ____exports = {}`
    if (lines[0] === "local ____exports = {}" && lines[1].startsWith("--")) {
        let end = 1;
        while (lines[end].startsWith("--")) end++;
        lines = [...lines.slice(1, end), "", lines[0], ...lines.slice(end)];
    }

    const out = [];
    for (let i = 0; i < lines.length; i++) {
        const line = lines[i];
        const prev = out.length > 0 ? out[out.length - 1] : "";
        const topDoc = line.startsWith("---");
        const topFn = /^(local )?function /.test(line) && !prev.startsWith("--");
        if ((topDoc || topFn) && prev !== "" && i > 0) {
            let j = i;
            while (lines[j].startsWith("--")) j++;
            const isFn = /^(local )?function /.test(lines[j]);
            out.push("");
            if (isFn) out.push("");
        }
        out.push(...wrap(line));
    }
    return out.join("\n");
}

module.exports = {
    beforeEmit(program, options, emitHost, result) {
        const errors = [];
        for (const file of result) {
            if (!file.outputPath.endsWith(".lua")) continue;
            file.code = layout(file.code);
            if (/require\("lualib_bundle"\)/.test(file.code)) {
                errors.push(diagnostic(file.outputPath,
                    "needs lualib_bundle; write TypeScript that needs no helper"));
            }
            file.code.split("\n").forEach((line, n) => {
                if (line.length > WIDTH) {
                    errors.push(diagnostic(file.outputPath,
                        `line ${n + 1} is ${line.length} columns: ${line.trim()}`));
                }
            });
        }
        return errors;
    },
};
