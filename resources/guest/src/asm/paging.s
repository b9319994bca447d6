/*
 * One identity map for all CPUs: 0 .. max(4 GiB, end of RAM in e820), user
 * accessible (U/S) so that ring 3 can reach RAM and MMIO directly, with the
 * 3..4 GiB MMIO hole uncached (PCD|PWT).  1 GiB pages when the CPU has them,
 * else 2 MiB pages.  Runs in ring 0, so the loops are as short as possible.
 */
    .set PTE_P_RW_US, 0x7
    .set PTE_LEAF,    0x87              /* P | RW | US | PS */
    .set PTE_UC,      0x18              /* PWT | PCD */

    .text
    .globl build_page_tables
build_page_tables:
    lea     {ring0_info}(%rip), %r10
    mov     {INFO_BOOT_PARAMS}(%r10), %rsi

    /* r8 = highest end of a RAM (type 1) e820 entry, at least 4 GiB. */
    movzbl  0x1e8(%rsi), %ecx
    cmp     $128, %ecx
    jbe     1f
    mov     $128, %ecx
1:  lea     0x2d0(%rsi), %rdx
    mov     $1, %r8
    shl     $32, %r8
2:  test    %ecx, %ecx
    jz      4f
    cmpl    $1, 16(%rdx)
    jne     3f
    mov     (%rdx), %rax
    add     8(%rdx), %rax
    cmp     %r8, %rax
    jbe     3f
    mov     %rax, %r8
3:  add     $20, %rdx
    dec     %ecx
    jmp     2b

    /* r8 = GiB to map, rounded up and capped by the table space we have. */
4:  add     $0x3fffffff, %r8
    shr     $30, %r8
    mov     $512, %r9
    cmpl    $0, {INFO_HAS_1G}(%r10)
    jne     5f
    mov     ${MAX_PD_TABLES}, %r9
5:  cmp     %r9, %r8
    jbe     6f
    mov     %r9, %r8
6:  mov     %r8, %rax
    shl     $30, %rax
    mov     %rax, {INFO_MAPPED_BYTES}(%r10)

    /* PML4 and PDPT start empty; PML4[0] -> PDPT. */
    xor     %eax, %eax
    lea     {pml4}(%rip), %rdi
    mov     $512, %ecx
    rep stosq
    lea     {pdpt}(%rip), %rdi
    mov     $512, %ecx
    rep stosq
    lea     {pdpt}(%rip), %rdi
    lea     PTE_P_RW_US(%rdi), %rax
    mov     %rax, {pml4}(%rip)

    cmpl    $0, {INFO_HAS_1G}(%r10)
    je      map_2m

    /* 1 GiB pages: PDPT[i] = i GiB. */
    mov     $PTE_LEAF, %eax
    mov     %r8, %rcx
7:  mov     %rax, (%rdi)
    add     $8, %rdi
    add     $0x40000000, %rax
    dec     %rcx
    jnz     7b
    orq     $PTE_UC, {pdpt}+3*8(%rip)
    jmp     load_cr3

    /* 2 MiB pages: PDPT[i] -> pd_tables[i]; the PDs are one flat array. */
map_2m:
    lea     {pd_tables}(%rip), %rax
    or      $PTE_P_RW_US, %rax
    mov     %r8, %rcx
8:  mov     %rax, (%rdi)
    add     $8, %rdi
    add     $4096, %rax
    dec     %rcx
    jnz     8b
    lea     {pd_tables}(%rip), %rdi
    mov     $PTE_LEAF, %eax
    mov     %r8, %rcx
    shl     $9, %rcx
9:  mov     %rax, (%rdi)
    add     $8, %rdi
    add     $0x200000, %rax
    dec     %rcx
    jnz     9b
    /* Uncache the MMIO hole: the fourth PD. */
    lea     {pd_tables}+3*4096(%rip), %rdi
    mov     $512, %ecx
10: orq     $PTE_UC, (%rdi)
    add     $8, %rdi
    dec     %ecx
    jnz     10b

load_cr3:
    lea     {pml4}(%rip), %rax
    mov     %rax, %cr3
    ret
