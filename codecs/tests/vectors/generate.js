'use strict';
// Writes hessian2.json: Hessian 2.0 bytes produced by the reference JavaScript
// implementation (hessian.js, with js-to-java for Java-typed values), each with a JSON
// description of the value a decoder must produce.
//
//   npm install && node generate.js
//
// Each entry is {name, hex, expected, canonical}. `canonical` is false where hessian.js
// was asked for a form a compact encoder never picks (variable-length lists), so only
// the decoded value, not the bytes, must match after re-encoding.
//
// `expected` is one of:
//   {"t":"null"} {"t":"bool","v":true} {"t":"int","v":1} {"t":"long","v":"1"}
//   {"t":"double","bits":"<16 hex digits, IEEE 754 big-endian>","v":1.5}
//   {"t":"date","v":"<millis>"} {"t":"string","v":"..."}
//   {"t":"string","parts":[["text", repeat], ...]}   (long strings, concatenated)
//   {"t":"binary","hex":"..."} {"t":"list","type":null|"...","items":[...]}
//   {"t":"map","type":null|"...","entries":[[k, v], ...]}
//   {"t":"object","class":"...","fields":[["name", v], ...]} {"t":"ref","v":0}

const fs = require('fs');
const path = require('path');
const hessian = require('hessian.js');
const java = require('js-to-java');

const N = () => ({ t: 'null' });
const B = (v) => ({ t: 'bool', v });
const I = (v) => ({ t: 'int', v });
const L = (v) => ({ t: 'long', v: String(v) });
const D = (v) => {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(v);
  return { t: 'double', bits: b.toString('hex'), v: Object.is(v, -0) ? '-0' : v };
};
const Dt = (ms) => ({ t: 'date', v: String(ms) });
const S = (v) => ({ t: 'string', v });
const SP = (...parts) => ({ t: 'string', parts });
const Bin = (buf) => ({ t: 'binary', hex: Buffer.from(buf).toString('hex') });
const List = (type, items) => ({ t: 'list', type, items });
const Map_ = (type, entries) => ({ t: 'map', type, entries });
const Obj = (cls, fields) => ({ t: 'object', class: cls, fields });
const Ref = (v) => ({ t: 'ref', v });

const vectors = [];
function add(name, write, expected, canonical = true) {
  const enc = new hessian.EncoderV2();
  write(enc);
  vectors.push({ name, hex: enc.get().toString('hex'), expected, canonical });
}
// A value written with hessian.js's general write(), which picks the form.
function val(name, value, expected, canonical = true) {
  add(name, (e) => e.write(value), expected, canonical);
}

const bytes = (n) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7) & 0xff));

// Null and booleans.
val('null', null, N());
val('true', true, B(true));
val('false', false, B(false));
val('java.lang.Boolean', java.Boolean(true), B(true));

// Ints: every compact form and its boundaries.
for (const v of [0, -16, 47, -17, 48, -2048, 2047, -2049, 2048, -262144, 262143, -262145, 262144,
  2147483647, -2147483648]) {
  add(`int ${v}`, (e) => e.writeInt(v), I(v));
}
val('java.lang.Integer', java.Integer(100), I(100));

// Longs: every compact form and its boundaries.
for (const v of [0, -8, 15, -9, 16, -2048, 2047, -2049, 2048, -262144, 262143, 262144,
  2147483647, -2147483648, 2147483648, -2147483649, 1700000000123]) {
  add(`long ${v}`, (e) => e.writeLong(v), L(v));
}
add('long max', (e) => e.writeLong('9223372036854775807'), L('9223372036854775807'));
add('long min', (e) => e.writeLong('-9223372036854775808'), L('-9223372036854775808'));
val('java.lang.Long small', java.Long(5), L(5));
val('java.lang.Long large', java.Long('1234567890123'), L('1234567890123'));

// Doubles: zero, one, byte, short, thousandths and full forms.
for (const v of [0, 1, -1, 127, -128, 128, -129, 32767, -32768, 32768, 0.5, 12.25, -2.5, 0.1,
  0.001, 2147483.647, 3.14159, 1e300, -1.5e-300, 123456789.123]) {
  add(`double ${v}`, (e) => e.writeDouble(v), D(v));
}
// hessian.js writes -0.0 as the zero tag, which decodes as +0.0.
add('double -0 (written as 0.0)', (e) => e.writeDouble(-0), D(0));
val('java.lang.Double', java.Double(2.75), D(2.75));

// Dates: whole minutes use the 32-bit minute form.
add('date epoch', (e) => e.writeDate(new Date(0)), Dt(0));
add('date minutes', (e) => e.writeDate(new Date(1700000040000)), Dt(1700000040000));
add('date millis', (e) => e.writeDate(new Date(1700000000123)), Dt(1700000000123));
add('date before epoch', (e) => e.writeDate(new Date(-86400000)), Dt(-86400000));

// Strings: lengths count UTF-16 units.
for (const n of [0, 1, 31, 32, 1023, 1024, 4096]) {
  add(`string ${n} units`, (e) => e.writeString('s'.repeat(n)), SP(['s', n]));
}
add('string 0x8000 units (one chunk)', (e) => e.writeString('c'.repeat(0x8000)), SP(['c', 0x8000]));
add('string 0x8001 units (two chunks)', (e) => e.writeString('c'.repeat(0x8001)), SP(['c', 0x8001]));
add('string chunk boundary before an emoji',
  (e) => e.writeString('a'.repeat(0x7fff) + '\u{1F600}' + 'b'),
  SP(['a', 0x7fff], ['\u{1F600}', 1], ['b', 1]));
add('string latin-1', (e) => e.writeString('héllo wörld'), S('héllo wörld'));
add('string CJK', (e) => e.writeString('中文字符串'), S('中文字符串'));
add('string emoji', (e) => e.writeString('😀'), S('😀'));
add('string mixed emoji', (e) => e.writeString('a😀b🎉c中'), S('a😀b🎉c中'));
add('string 16 emoji (32 units, medium form)', (e) => e.writeString('🚀'.repeat(16)), SP(['🚀', 16]));
add('string NUL and controls', (e) => e.writeString('a\u0000b\u0001\n'), S('a\u0000b\u0001\n'));
add('string U+FFFF', (e) => e.writeString('\uffff'), S('\uffff'));
val('java.lang.String', java.String('typed'), S('typed'));

// Binary: short, medium, final and chunked forms.
for (const n of [0, 1, 15, 16, 1023, 1024, 4093, 4094, 9000]) {
  add(`binary ${n} bytes`, (e) => e.writeBytes(bytes(n)), Bin(bytes(n)));
}

// Lists.
val('list empty', [], List(null, []));
val('list ints', [1, 2, 3], List(null, [I(1), I(2), I(3)]));
val('list of 8 (fixed untyped)', [1, 2, 3, 4, 5, 6, 7, 8], List(null, [1, 2, 3, 4, 5, 6, 7, 8].map(I)));
val('list mixed', [null, true, 'x', 1.5], List(null, [N(), B(true), S('x'), D(1.5)]));
val('typed list [int', java.array.int([1, 2]), List('[int', [I(1), I(2)]));
val('typed list of 9 (fixed typed)', java.array('java.lang.String', 'abcdefghi'.split('')),
  List('[java.lang.String', 'abcdefghi'.split('').map(S)));
val('typed list ArrayList', { $class: 'java.util.ArrayList', $: [1] }, List(null, [I(1)]));
val('typed list LinkedList', { $class: 'java.util.LinkedList', $: [1] }, List('java.util.LinkedList', [I(1)]));
val('typed lists share a type ref', [java.array.int([1]), java.array.int([2]), java.array.long([3])],
  List(null, [List('[int', [I(1)]), List('[int', [I(2)]), List('[long', [L(3)])]));
val('nested lists', [[1, [2, [3]]], []], List(null, [List(null, [I(1), List(null, [I(2), List(null, [I(3)])])]), List(null, [])]));
add('variable untyped list (W)', (e) => {
  e._writeListBegin(-1);
  e.write(1);
  e.write('two');
  e.byteBuffer.putChar('Z');
}, List(null, [I(1), S('two')]), false);
add('variable typed lists (U) with a type ref', (e) => {
  e._writeListBegin(-1);
  e._writeListBegin(-1, 'java.util.Vector');
  e.write(1);
  e.byteBuffer.putChar('Z');
  e._writeListBegin(-1, 'java.util.Vector');
  e.byteBuffer.putChar('Z');
  e.byteBuffer.putChar('Z');
}, List(null, [List('java.util.Vector', [I(1)]), List('java.util.Vector', [])]), false);

// Maps.
val('map empty', {}, Map_(null, []));
val('map strings (keys sorted by hessian.js)', { b: 'x', a: 1 }, Map_(null, [[S('a'), I(1)], [S('b'), S('x')]]));
val('map HashMap', { $class: 'java.util.HashMap', $: { k: null } }, Map_(null, [[S('k'), N()]]));
// hessian.js treats java.util.Map like HashMap and writes it untyped.
val('map java.util.Map', { $class: 'java.util.Map', $: { k: 'v' } }, Map_(null, [[S('k'), S('v')]]));
add('typed map (M)', (e) => e._writeHashMap({ k: 'v' }, 'java.util.TreeMap'),
  Map_('java.util.TreeMap', [[S('k'), S('v')]]));
add('typed maps and lists share type refs', (e) => {
  e._writeListBegin(3);
  e._writeHashMap({}, 'java.util.TreeMap');
  e._writeHashMap({ a: 1 }, 'java.util.TreeMap');
  e.write({ $class: 'java.util.TreeMap', $: [2] });
}, List(null, [Map_('java.util.TreeMap', []), Map_('java.util.TreeMap', [[S('a'), I(1)]]),
  List('java.util.TreeMap', [I(2)])]));
val('map with int keys', new Map([[1, 'one'], [2, 'two']]), Map_(null, [[I(1), S('one')], [I(2), S('two')]]));
val('dubbo attachments', { path: 'com.example.DemoService', interface: 'com.example.DemoService', version: '1.0.0', group: 'blue', timeout: 3000, batchjob: 'nightly' },
  Map_(null, [['batchjob', S('nightly')], ['group', S('blue')], ['interface', S('com.example.DemoService')],
    ['path', S('com.example.DemoService')], ['timeout', I(3000)], ['version', S('1.0.0')]].map(([k, v]) => [S(k), v])));
val('nested maps', { a: { b: { c: [1] } } }, Map_(null, [[S('a'), Map_(null, [[S('b'), Map_(null, [[S('c'), List(null, [I(1)])]])]])]]));

// Objects and class definitions.
const user = (name, age) => ({ $class: 'com.example.User', $: { name: java.String(name), age: java.Integer(age) } });
const userV = (name, age) => Obj('com.example.User', [['name', S(name)], ['age', I(age)]]);
val('object', user('bob', 30), userV('bob', 30));
val('objects reuse a class def', [user('bob', 30), user('amy', 25)], List(null, [userV('bob', 30), userV('amy', 25)]));
val('object with nested object and typed fields', {
  $class: 'com.example.Order',
  $: {
    id: java.Long(1234567890123),
    owner: user('eve', 40),
    items: java.array('java.lang.String', ['a', 'b']),
    price: java.Double(9.99),
    created: new Date(1700000000123),
    tags: { $class: 'java.util.Map', $: { k: 'v' } }, // written untyped by hessian.js
  },
}, Obj('com.example.Order', [
  ['id', L(1234567890123)],
  ['owner', userV('eve', 40)],
  ['items', List('[java.lang.String', [S('a'), S('b')])],
  ['price', D(9.99)],
  ['created', Dt(1700000000123)],
  ['tags', Map_(null, [[S('k'), S('v')]])],
]));
val('object with null field', { $class: 'com.example.Empty', $: { x: null } }, Obj('com.example.Empty', [['x', N()]]));
{
  const objs = [];
  const want = [];
  for (let i = 0; i < 18; i++) {
    objs.push({ $class: `com.example.C${i}`, $: { v: java.Integer(i) } });
    want.push(Obj(`com.example.C${i}`, [['v', I(i)]]));
  }
  objs.push({ $class: 'com.example.C17', $: { v: java.Integer(99) } });
  want.push(Obj('com.example.C17', [['v', I(99)]]));
  val('18 classes: O with an int class index', objs, List(null, want));
}
val('enum', java.enum('com.example.Color', 'RED'), Obj('com.example.Color', [['name', S('RED')]]));

// Back-references to earlier lists, maps and objects.
{
  const shared = { k: 'v' };
  val('ref to a shared map', [shared, shared], List(null, [Map_(null, [[S('k'), S('v')]]), Ref(1)]));
  const arr = [1];
  val('ref to a shared list', { a: arr, b: arr }, Map_(null, [[S('a'), List(null, [I(1)])], [S('b'), Ref(1)]]));
  const u = user('ref', 1);
  val('ref to a shared object', [u, [u]], List(null, [userV('ref', 1), List(null, [Ref(1)])]));
  const cyc = { name: 'loop' };
  cyc.self = cyc;
  val('ref cycle', cyc, Map_(null, [[S('name'), S('loop')], [S('self'), Ref(0)]]));
}

fs.writeFileSync(path.join(__dirname, 'hessian2.json'), JSON.stringify(vectors, null, 1) + '\n');
console.log(`wrote ${vectors.length} vectors`);
